"""The canary feature.

Its command and thresholds (``command``), the evaluation of V1 against V2 and its artifacts
(``evaluation``), and the built-in samples (``synthetic``). See docs/domain.md.
"""
