"""The path fields (ctkPathLineEdit) <-> string parameters, with CTK's rules about valid input.

A ctkPathLineEdit emits `currentPathChanged` only while its text is acceptable to its validator
(commontk/CTK Libs/Widgets/ctkPathLineEdit.cpp, `updateHasValidInput`), and `validInputChanged`
only when acceptability flips. With name filters ("*.pth *.pt") "" is never acceptable, and
erasing "/x/sam.pth" passes through unacceptable text ("/x/sam.") before reaching "": no signal
reports the empty field. So the widget treats a field with unacceptable text as "no path"
(the parameter becomes "" when the text turns unacceptable), and must then not write that ""
back over the text the user is still typing.
"""

from __future__ import annotations


def field_takes_parameter(text: str, valid: bool, parameter: str) -> bool:
    """Whether a path field showing `text` (acceptable to CTK or not) is to be set to the
    parameter's value: when they differ, except an empty parameter over unacceptable text,
    which is that text's own "no path" (overwriting it would erase what is being typed)."""
    return text != parameter and (valid or parameter != "")
