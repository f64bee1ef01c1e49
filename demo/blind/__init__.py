"""The blind test: battles between a base's baseline and one of its variants, the votes store (SQLite),
ratings with intervals, per-session rate limits, the results as tables and files (results_view), the
results chart and `python -m demo votes`.

Imports running (to answer a battle), artifacts (where the votes live), config and errors; never ui or gradio.
"""
