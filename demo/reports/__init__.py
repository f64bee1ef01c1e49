"""Results as people read them: text with units, the comparison card (JSON, CSV, Markdown), charts, and
the one escaping module the page, the card and the blind test share.

Imports only settings and errors of the package: every other part may use it.
"""
