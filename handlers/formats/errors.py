"""The one exception the format parsers raise."""


class FormatError(ValueError):
    """The payload as a whole is not readable in the expected format.

    Raised only for wholly unreadable payloads (not the format at all, not
    valid JSON, wrong top-level shape). Bad items inside a readable payload
    become ``responder.model.ItemError`` values instead.
    """
