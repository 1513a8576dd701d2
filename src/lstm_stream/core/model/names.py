"""Which of a model's own inputs and outputs are ``x``, ``y``, the state pairs and extras.

A user's policy arrives with the names its exporter gave it (``obs``, ``h0``,
``c0`` -> ``action``, ``value``, ``hn``, ``cn``). :func:`map_names` decides
which name plays which part, from the user's declaration (``--io``,
``--state``, ``[model.io]``) and, for what is not declared, only by these
documented rules (docs/model-contract.md):

- a state input ``s`` is returned as ``s_out``; ``s_in`` as ``s_out``; torch's
  ``h0``/``hn`` and ``c0``/``cn`` (also ``h_0``/``h_n``, ``c_0``/``c_n``);
- ``x`` is the input named ``x``, else the only input that is not a state;
- ``y`` is the output named ``y``, else the only output that is not a state;
- every other output is an extra output, published by name.

It never guesses between candidates: when a part cannot be decided, every
problem is listed at once, with the exact flags that would decide it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from lstm_stream.core.model.onnx_proto import OnnxModel, ValueInfo

# torch.nn.LSTM/GRU users name the state they pass in and get back like this
TORCH_STATE_NAMES = {"h0": "hn", "c0": "cn", "h_0": "h_n", "c_0": "c_n"}


@dataclass(frozen=True)
class ModelIO:
    """What the user declared about the model's names; empty means "infer"."""

    x: str = ""
    y: str = ""
    states: dict[str, str] = field(default_factory=dict)  # state input -> state output
    extras: tuple[str, ...] = ()  # outputs to publish as extras; () = every other output
    state_layout: str = ""  # "" infer, "layers_batch_hidden" or "batch_layers_hidden"

    def flags(self) -> list[str]:
        """The command-line flags that declare this mapping."""
        io = [f"{k}={v}" for k, v in (("x", self.x), ("y", self.y)) if v]
        out = [f"--io {','.join(io)}"] if io else []
        out += [f"--state {i}={o}" for i, o in self.states.items()]
        return out


@dataclass(frozen=True)
class NameMapping:
    """The decided parts, by the model's own names, and how each was decided.

    When something could not be decided, ``problems`` says what (the parts that
    were decided are still filled in, so that their shapes can be checked too)
    and ``advice`` gives the flags that would decide it.
    """

    x: str  # "" when undecided
    y: str
    states: tuple[tuple[str, str], ...]  # (input, output) in the model's input order
    extras: tuple[str, ...]
    decided: tuple[str, ...]  # one line per part, for `lstm-stream info`
    problems: tuple[str, ...] = ()
    advice: str = ""


def map_names(graph: OnnxModel, io: ModelIO) -> NameMapping:
    """Decide x, y, the state pairs and the extras of ``graph``; what cannot be decided
    is listed in the result's ``problems``, with the flags to pass in ``advice``."""
    inputs = {vi.name: vi for vi in graph.inputs}
    outputs = {vi.name: vi for vi in graph.outputs}
    problems: list[str] = []
    decided: list[str] = []
    _check_declared(io, inputs, outputs, problems)
    pairs: dict[str, str] = {i: o for i, o in io.states.items()
                             if i in inputs and o in outputs}
    decided += [f"state {i} -> {o}: declared" for i, o in pairs.items()]
    for name in inputs:
        if name in pairs or name == io.x or (not io.x and name == "x"):
            continue
        found = _paired_by_name(name, outputs, set(pairs.values()))
        if found is not None:
            pairs[name] = found[0]
            decided.append(f"state {name} -> {found[0]}: {found[1]}")
    x = _choose_x(io, inputs, pairs, problems, decided)
    state_outputs = set(pairs.values())
    unpaired = [n for n in inputs if n != x and n not in pairs]
    y = _choose_y(io, outputs, state_outputs, problems, decided,
                  [inputs[n] for n in unpaired])
    for name in unpaired:
        same = _same_shape(inputs[name], outputs, state_outputs | {y})
        if not x and not same:
            continue  # likely x itself: the problem above says x is undecided
        problems.append(f"state input {name!r} has no output that returns it by name"
                        + (f"; outputs of the same shape: {', '.join(map(repr, same))}"
                           if same else "; no output has its shape"))
    if not pairs and not unpaired and x:
        problems.append("it has no state inputs: a stateful step model takes x plus its "
                        "recurrent state (for an LSTM h and c, shaped [layers, batch, hidden])")
    extras = tuple(n for n in outputs if n != y and n not in state_outputs
                   and (not io.extras or n in io.extras))
    ordered = tuple((i, pairs[i]) for i in inputs if i in pairs)
    if problems:
        return NameMapping(x, y, ordered, extras if y else (), tuple(decided),
                           tuple(problems), _advice(io, x, y, pairs, unpaired, inputs, outputs))
    if extras:
        decided.append(f"extra outputs {', '.join(extras)}: every output that is not y or a "
                       "state" if not io.extras else f"extra outputs {', '.join(extras)}: "
                       "declared")
    return NameMapping(x, y, ordered, extras, tuple(decided))


def _check_declared(io: ModelIO, inputs: dict[str, ValueInfo], outputs: dict[str, ValueInfo],
                    problems: list[str]) -> None:
    have_in, have_out = ", ".join(map(repr, inputs)), ", ".join(map(repr, outputs))
    if io.x and io.x not in inputs:
        problems.append(f"declared x {io.x!r} is not an input (inputs: {have_in})")
    if io.y and io.y not in outputs:
        problems.append(f"declared y {io.y!r} is not an output (outputs: {have_out})")
    for i, o in io.states.items():
        if i not in inputs:
            problems.append(f"declared state input {i!r} is not an input (inputs: {have_in})")
        if o not in outputs:
            problems.append(f"declared state output {o!r} is not an output "
                            f"(outputs: {have_out})")
    for name in io.extras:
        if name not in outputs:
            problems.append(f"declared extra output {name!r} is not an output "
                            f"(outputs: {have_out})")


def _paired_by_name(name: str, outputs: dict[str, ValueInfo],
                    taken: set[str]) -> tuple[str, str] | None:
    """The output that returns state input ``name`` by the naming rules, and the rule."""
    candidates = [(name + "_out", "named <s> -> <s>_out")]
    if name.endswith("_in"):
        candidates.append((name[:-3] + "_out", "named <s>_in -> <s>_out"))
    if name in TORCH_STATE_NAMES:
        candidates.append((TORCH_STATE_NAMES[name], "torch's names h0 -> hn, c0 -> cn"))
    for out, rule in candidates:
        if out in outputs and out not in taken:
            return out, rule
    return None


def _choose_x(io: ModelIO, inputs: dict[str, ValueInfo], pairs: dict[str, str],
              problems: list[str], decided: list[str]) -> str:
    if io.x:
        if io.x in pairs:
            problems.append(f"declared x {io.x!r} is also a state input")
        if io.x not in inputs or io.x in pairs:
            return ""  # said by _check_declared or above
        decided.append(f"x = {io.x}: declared")
        return io.x
    if "x" in inputs and "x" not in pairs:
        decided.append("x = x: named x")
        return "x"
    rest = [n for n in inputs if n not in pairs]
    if len(rest) == 1:
        decided.append(f"x = {rest[0]}: the only input that is not a state")
        return rest[0]
    if rest:
        problems.append(f"cannot tell which input is x: {', '.join(map(repr, rest))} are "
                        "not states by name")
    else:
        problems.append("no input is left for x: every input is a state")
    return ""


def _choose_y(io: ModelIO, outputs: dict[str, ValueInfo], state_outputs: set[str],
              problems: list[str], decided: list[str], unpaired: list[ValueInfo]) -> str:
    if io.y:
        if io.y in state_outputs:
            problems.append(f"declared y {io.y!r} is also a state output")
        if io.y not in outputs or io.y in state_outputs:
            return ""
        decided.append(f"y = {io.y}: declared")
        return io.y
    if "y" in outputs and "y" not in state_outputs:
        decided.append("y = y: named y")
        return "y"
    rest = [n for n in outputs if n not in state_outputs and n not in io.extras]
    if len(rest) == 1:
        decided.append(f"y = {rest[0]}: the only output that is not a state")
        return rest[0]
    if rest:
        # In the message only, not to decide: outputs shaped like an unpaired state input
        # are more likely that state than y.
        likely = [n for n in rest if not any(_dims(outputs[n]) == _dims(vi) for vi in unpaired)]
        problems.append(f"cannot tell which output is the policy output y: "
                        f"{', '.join(map(repr, likely or rest))} (the others become extra "
                        "outputs, published by name)")
    else:
        problems.append("no output is left for y: every output returns a state")
    return ""


def _dims(vi: ValueInfo) -> tuple[object, ...]:
    return tuple(d if isinstance(d, int) else "?" for d in vi.dims)


def _same_shape(vi: ValueInfo, outputs: dict[str, ValueInfo], taken: set[str]) -> list[str]:
    return [n for n, o in outputs.items() if n not in taken and _dims(o) == _dims(vi)]


def _advice(io: ModelIO, x: str, y: str, pairs: dict[str, str], unpaired: list[str],
            inputs: dict[str, ValueInfo], outputs: dict[str, ValueInfo]) -> str:
    """The flags that would decide what could not be decided."""
    guess_x = x or next((n for n in inputs if n not in pairs and not _same_shape(
        inputs[n], outputs, set())), "")
    taken = set(pairs.values())
    guesses: dict[str, str] = {}
    for name in unpaired:
        if name == guess_x:
            continue
        same = _same_shape(inputs[name], outputs, taken | set(guesses.values()) | {y})
        if same:
            guesses[name] = same[0]
    rest_out = [n for n in outputs if n not in taken and n not in guesses.values()]
    guess_y = y or (rest_out[0] if rest_out else "")
    flags = ModelIO(x=guess_x if not x or io.x else "", y=guess_y if not y or io.y else "",
                    states={**{i: o for i, o in io.states.items()}, **guesses}).flags()
    if flags and guess_x and guess_y:
        return ("Declare the names, e.g. " + " ".join(flags)
                + (" (a guess from shapes and order: states of the same shape, such as an "
                   "LSTM's h and c, cannot be told apart; check against your export code)"
                   if guesses else "")
                + ", or the same in [model.io] of the config (docs/model-contract.md).")
    return ("Declare the names with --io x=INPUT,y=OUTPUT and --state IN=OUT, or in "
            "[model.io] of the config (docs/model-contract.md).")
