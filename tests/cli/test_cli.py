"""The `lstm-stream` command as a newcomer meets it: help, info, control, demo."""

from __future__ import annotations

import argparse
import ast
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from helpers.support import REPO, VehicleStack, run_python, serve_process

MODEL = REPO / "models" / "random_lstm.onnx"


def cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "lstm_stream", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=timeout)


def test_serve_help_explains_the_sockets_and_shows_examples() -> None:
    done = cli("serve", "--help")
    assert done.returncode == 0
    for needle in ("--input ENDPOINT", "--output ENDPOINT", "--control ENDPOINT",
                   "--set SECTION.FIELD=VALUE", "examples:", "docs/protocol.md",
                   "tcp://127.0.0.1:5555"):
        assert needle in done.stdout, needle


def test_info_describes_the_shipped_model() -> None:
    done = cli("info", str(MODEL))
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "x [batch, 16]" in out and "y [batch, 2]  (steer, accel)" in out
    assert "h -> h_out [layers=2, batch, hidden=64]" in out
    assert "c -> c_out [layers=2, batch, hidden=64]" in out
    assert "contract   ok" in out and "LSTM x2" in out


def test_info_json_is_machine_readable() -> None:
    info = json.loads(cli("info", str(MODEL), "--json").stdout)
    assert info["features"] == 16 and info["outputs"] == 2 and info["cell"] == "lstm"
    assert [s["input"] for s in info["states"]] == ["h", "c"]
    assert len(info["sha256"]) == 64


def test_info_on_a_bad_file_says_what_is_wrong(tmp_path: Path) -> None:
    bad = tmp_path / "notes.onnx"
    bad.write_text("not a model")
    done = cli("info", str(bad))
    assert done.returncode == 1
    assert "notes.onnx" in done.stderr and done.stderr.startswith("lstm-stream info: error:")
    missing = cli("info", str(tmp_path / "missing.onnx"))
    assert missing.returncode == 1 and "missing.onnx" in missing.stderr


def test_bad_config_value_is_a_usage_error() -> None:
    done = cli("serve", str(MODEL), "--set", "state.max_streams=0")
    assert done.returncode == 2
    assert "'state.max_streams' must be between 1 and 1000000; got 0" in done.stderr


def test_busy_port_gives_a_clear_error() -> None:
    with VehicleStack() as stack:
        # the vehicle stack already binds this port: serve cannot bind its output there
        busy = stack.sensors_endpoint
        done = cli("serve", str(MODEL), "--output", busy, "--control",
                   "tcp://127.0.0.1:0")
    assert done.returncode == 1
    assert "Could not bind the output socket" in done.stderr and busy in done.stderr


def test_control_command_against_a_live_runner() -> None:
    with VehicleStack() as stack, serve_process(MODEL, stack.sensors_endpoint) as served:
        done = cli("control", "status", "--control", served.control)
        assert done.returncode == 0, done.stderr
        status = json.loads(done.stdout)
        assert status["ok"] and status["model"]["features"] == 16
        unknown = cli("control", "reset", "--stream", "ghost", "--control", served.control)
        assert unknown.returncode == 1 and "unknown stream 'ghost'" in unknown.stdout


def test_control_command_without_a_runner_times_out_clearly() -> None:
    from helpers.support import free_endpoint

    done = cli("control", "status", "--control", free_endpoint(), "--timeout", "0.3")
    assert done.returncode == 1
    assert "No reply from the runner's control socket" in done.stderr


@pytest.mark.slow
def test_demo_runs_and_outputs_match_the_reference(tmp_path: Path) -> None:
    plot = tmp_path / "demo.png"
    done = cli("demo", "--rate", "0", "--plot", str(plot))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "demo: OK" in done.stdout
    assert "sent 600, outputs 600, stepped 600, rejected 0" in done.stdout
    assert "served (state carried) MAE" in done.stdout and "round trip  p50" in done.stdout
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# -- an edge install: no optional package ----------------------------------------------------

# Every package of an extra (pyproject.toml) that the library imports.
OPTIONAL = ("torch", "mcap", "zstandard", "lz4", "matplotlib", "sklearn", "onnx", "onnxscript",
            "ray", "rosbags", "foxglove", "websockets", "highway_env", "gymnasium")

WITHOUT_OPTIONAL = f"""
import argparse, contextlib, io, json, sys
for name in {OPTIONAL!r}:
    sys.modules[name] = None  # any import of it now raises ImportError
from lstm_stream.cli.main import build_parser, main

def commands(parser, path):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield path + [name]
                yield from commands(sub, path + [name])

helps = {{}}
for command in [[], *commands(build_parser(), [])]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.suppress(SystemExit):
        main([*command, "--help"])
    helps[" ".join(command)] = out.getvalue().startswith("usage: lstm-stream")
errors = {{}}
for command in (["export", "best.pt", "-o", "m.onnx"], ["log", "info", "x.mcap"],
                ["bench", "--eval", "pyproject.toml"]):
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = main(command)
    errors[command[0]] = [code, err.getvalue()]
print(json.dumps({{"helps": helps, "errors": errors}}))
"""


def test_every_help_works_without_the_optional_packages_and_a_command_names_its_extra() -> None:
    # Every cli/ module is imported when the CLI starts: none may import an optional
    # package at module level, and a command that needs one says what to install.
    done = run_python(WITHOUT_OPTIONAL)
    assert done.returncode == 0, done.stderr
    found = json.loads(done.stdout)
    assert {"serve", "train", "record", "eval", "log info", "bench", "keys"} <= set(
        found["helps"])
    assert all(found["helps"].values()), found["helps"]
    assert found["errors"]["export"] == [1, "lstm-stream export: error: Export needs torch: "
                                         "pip install torch==2.13.0.\n"]
    assert found["errors"]["log"][0] == 1
    assert "'mcap' package" in found["errors"]["log"][1]
    assert "pip install 'lstm-stream[logs]'" in found["errors"]["log"][1]
    assert "--eval needs the 'mcap' package" in found["errors"]["bench"][1]


# -- what the CLI tells a user to type must exist -------------------------------------------

# Modules whose messages every one of these commands prints: an option they name must
# exist in each (a hint raised in logs/reader.py reaches eval and replay alike).
SHARED_BY = {
    "logs/reader.py": ("eval", "replay"),
    "core/config/runner.py": ("serve", "eval"),
    "core/config/toml_load.py": ("serve", "eval"),
    "core/state/snapshot.py": ("serve",),
    "core/state/snapshot_files.py": ("serve",),
    "evaluate/run.py": ("eval",),
    "evaluate/json_output.py": ("eval",),
    "evaluate/options.py": ("eval",),
    "evaluate/fleet.py": ("eval",),
    "evaluate/score.py": ("eval",),
    "logs/rosbag.py": ("eval", "train"),
    "evaluate/compare.py": ("eval",),
    "evaluate/report.py": ("eval",),
    "evaluate/ray.py": ("eval",),
    "logs/record.py": ("record",),
    "logs/replay_options.py": ("replay",),
    "logs/recover.py": ("log recover",),
    "core/model/names.py": ("serve", "eval", "info", "check"),
    "core/backends/torch.py": ("check",),
    "core/backends/onnxruntime.py": ("serve", "eval"),
    "cli/model_io.py": ("serve", "info", "check", "eval"),
}
# Modules that hold the texts of several commands: an option must exist in one of them.
ONE_OF = {
    "bench/": ("bench", "serve", "eval"),  # also builds serve command lines, names eval's
    "cli/main.py": ("serve", "info", "check", "control", "demo"),
    "cli/bench.py": ("bench",),
    "cli/train.py": ("train", "export"),
    "cli/keys.py": ("keys generate",),
    "serve/client.py": ("serve", "control"),
    "serve/liveview.py": ("serve",),
    "demo.py": ("demo", "serve"),
    "procs.py": ("serve",),
    "cli/record_replay_eval.py": ("record", "replay", "eval"),
    "cli/log_command.py": ("log info", "log export", "log recover"),
    "logs/replay.py": ("replay", "serve"),
    "serve/security/": ("keys generate", "control"),
    "sim/": ("record", "serve"),
    "train/": ("train", "export"),
}
# Options of other programs that messages quote or start: `ray start ...`, `torchrun ...`,
# and the bench's comparison servers (`python -m lstm_stream.bench.servers --impl ...`).
OTHER_PROGRAMS = {"--head", "--port", "--address", "--node-ip-address", "--include-dashboard",
                  "--disable-usage-stats", "--nproc_per_node", "--impl", "--busy-poll-us"}
FLAG = re.compile(r"(?<![\w-])--[a-z][a-z0-9_-]*")


def _options_by_command() -> dict[str, set[str]]:
    from lstm_stream.cli.main import build_parser

    found: dict[str, set[str]] = {}

    def walk(parser: argparse.ArgumentParser, name: str) -> None:
        found[name] = {o for a in parser._actions for o in a.option_strings}
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for sub_name, sub in action.choices.items():
                    walk(sub, f"{name} {sub_name}".strip())

    walk(build_parser(), "")
    top = found.pop("")
    return {name: opts | top for name, opts in found.items()}


def _hints() -> list[tuple[str, int, str]]:
    """(module, line, flag) for every ``--flag`` in a string of the package, except
    docstrings and what argparse itself shows (option names, help, examples)."""
    root = REPO / "src" / "lstm_stream"
    out = []
    for path in sorted(root.rglob("*.py")):
        tree = ast.parse(path.read_text())
        skip = set()
        for node in ast.walk(tree):
            func = node.func if isinstance(node, ast.Call) else None
            name = getattr(func, "attr", getattr(func, "id", ""))
            if name in ("add_argument", "add_parser", "add_argument_group", "ArgumentParser"):
                skip.update(id(sub) for sub in ast.walk(node))
            body = getattr(node, "body", None)
            if isinstance(body, list) and body and isinstance(body[0], ast.Expr):
                skip.add(id(body[0].value))  # a docstring: read by developers, not printed
        module = str(path.relative_to(root))
        out += [(module, node.lineno, flag) for node in ast.walk(tree)
                if isinstance(node, ast.Constant) and isinstance(node.value, str)
                and id(node) not in skip for flag in FLAG.findall(node.value)]
    return out


def _owners(module: str, table: dict[str, tuple[str, ...]]) -> tuple[str, ...] | None:
    return next((cmds for prefix, cmds in table.items() if module.startswith(prefix)), None)


def test_every_option_a_message_names_exists_where_it_is_printed() -> None:
    options = _options_by_command()
    hints = _hints()
    assert ("logs/reader.py", "--topics") in {(m, f) for m, _, f in hints}  # it does scan
    wrong = []
    for module, line, flag in hints:
        shared, one_of = _owners(module, SHARED_BY), _owners(module, ONE_OF)
        assert shared or one_of, f"{module}: add it to SHARED_BY or ONE_OF"
        if flag in OTHER_PROGRAMS:
            continue
        if shared:
            wrong += [f"{module}:{line} names {flag}, which `lstm-stream {cmd}` lacks"
                      for cmd in shared if flag not in options[cmd]]
        elif one_of and not any(flag in options[cmd] for cmd in one_of):
            wrong.append(f"{module}:{line} names {flag}, which none of {one_of} has")
    assert not wrong, "\n".join(wrong)


# -- outputs a script can rely on ------------------------------------------------------------


def test_every_json_output_is_exactly_one_document(tmp_path: Path) -> None:
    from helpers.logs import write_drive

    log = write_drive(tmp_path / "drive.mcap", streams=1, steps=10)
    runs = {
        "info": cli("info", str(MODEL), "--json"),
        "log info": cli("log", "info", str(log), "--json"),
        "eval": cli("eval", str(log), "--model", str(MODEL), "--json", "--report",
                    str(tmp_path / "out")),
        "bench": cli("--log-level", "warning", "bench", "--throughput", "--quick", "--streams",
                     "1", "--duration", "0.3", "--steps", "50", "--servers", "decode",
                     "--model", str(MODEL), "--json", "-"),
    }
    with VehicleStack() as stack, serve_process(MODEL, stack.sensors_endpoint) as served:
        runs["control"] = cli("control", "status", "--control", served.control)
        runs["replay"] = cli("replay", str(log), "--output", stack.sensors_endpoint,
                             "--connect", "--no-wait", "--rate", "0", "--json")
    for name, done in runs.items():
        assert done.returncode == 0, (name, done.stderr)
        json.loads(done.stdout)  # one document, nothing before or after it
    assert "eval: report in" in runs["eval"].stderr  # human lines go to stderr
    assert "throughput" in runs["bench"].stderr


def test_output_into_a_closed_pipe_exits_quietly() -> None:
    def shell(reader: str) -> subprocess.CompletedProcess[str]:
        line = (f"{sys.executable} -m lstm_stream info {MODEL} | {reader}; "
                'echo "status ${PIPESTATUS[0]}" >&2')
        return subprocess.run(["bash", "-c", line], cwd=REPO, capture_output=True, text=True,
                              timeout=60)

    head = shell("head -1")
    assert head.stdout.startswith("model ") and len(head.stdout.splitlines()) == 1
    assert "Traceback" not in head.stderr and "Error" not in head.stderr, head.stderr
    gone = shell("true")  # the reader has exited before the first line is written
    assert gone.stderr.strip() == "status 141"  # quietly, as a Unix tool killed by SIGPIPE


@pytest.mark.parametrize(("args", "says"), [
    (("--set", "state.idle_timeout=2"), "lstm-stream serve: error: --set state.idle_timeout=2: "
     "unknown option 'state.idle_timeout'; did you mean 'state.idle_timeout_s'?"),
    (("--set", "state.max_streams=0"), "--set state.max_streams=0: 'state.max_streams' must "
     "be between 1 and 1000000"),
    (("--input", "localhost:5555"), "--input: 'input.endpoint' must be a ZeroMQ endpoint"),
])
def test_config_errors_blame_the_option_that_was_typed(args: tuple[str, ...],
                                                        says: str) -> None:
    done = cli("serve", str(MODEL), *args)
    assert done.returncode == 2
    assert says in done.stderr and "defaults" not in done.stderr
