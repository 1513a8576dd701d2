"""One message through admit -> step -> commit, and its outcome into messages:
the stepper, multi-source assembly, the step results and the emitter."""
