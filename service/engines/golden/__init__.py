"""The golden dataset feature.

Versions and their samples (``datasets``), the commands that store and read them
(``commands``), the comparison of a cost model against one (``comparison``) and what it
produces (``results``). See docs/golden.md.
"""
