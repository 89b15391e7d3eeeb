"""Experiments that produce the project's reported numbers.

- `heldout`: every adaptation method on the held-out tasks, with seeds, lr tuning on `val` seeds,
  Wilson CIs on `eval` seeds, forgetting, and a resumable results file (`python -m vla_prefix.experiments.heldout`).
- `merge`: shards of one held-out experiment (run side by side) merged into one results file.
- `report`: the results file as a markdown table, written into the README between markers.
- `records`, `figures`: the results file's records and summary, and its plots.
"""
