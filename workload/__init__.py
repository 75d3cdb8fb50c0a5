"""Attune's synthetic workload: shop traffic with a known answer, for demos, tests and benchmarks.

Not part of the flow: the dataflow's operators (``attune.operators``) never
import it. :mod:`attune.workload.generator` simulates a catalogue and users
and emits their events and item updates, deterministically for a seed;
:mod:`attune.workload.truth` holds the ground truth those events imply and the
rules it is computed by. ``attune generate`` (:mod:`attune.flows.generate`)
writes a workload to files or Kafka, and the embedded default of ``attune run``
replays one in process.
"""
