"""`lumi compare`: arms x seeds under a matched budget, paired statistics, curve diagnoses, a report.

Layout: arms / spec (what to compare) -> plan (matched per-arm budgets) -> comparison + runner
(checks, run directories, `lumi train` processes) -> results / stats / diagnose (numbers) ->
report / plots (what a researcher reads). See docs/compare.md.
"""
