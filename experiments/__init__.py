"""Experiments built on the toolkit: the results matrix behind RESULTS.md and the analyses of it.

Run from a checkout (each module is also a script; they read ``../shared/data`` and write into
the repository), not installed with the package:

- ``results_matrix.py``: the issue-6 matrix, prepare -> train -> report, resumable
  (``python experiments/results_matrix.py [options] [prepare] [train] [report]``);
  ``matrix_rows.py`` its rows, gains and the paper's numbers, ``matrix_runner.py`` the child
  processes over GPU slots, ``matrix_report.py`` RESULTS.md, matrix.csv and matrix.json.
- ``summarize_runs.py``: mean ± std over seeds of any folders of run folders.
- ``neighbour_entities.py``: how many gold mentions a graph's neighbour tweets contain.
- ``compare_graphs.py``: graph diagnostics side by side and overlap@K.
- ``gpu/``: the script and notes for running these on a lent GPU machine.
- ``results/``: the records the published numbers come from (run folders, CSV/JSON, the
  hand-written reading); tests never read them, they make their own run folders.
"""
