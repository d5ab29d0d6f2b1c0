"""Pure library code of the study tools: no click, no printing."""
