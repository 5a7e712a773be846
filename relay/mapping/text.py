"""Body bytes to text by the charset the sender declared, and only text the relay can store: no lone
surrogate, which neither UTF-8 nor Redis can hold. Every body family decodes through here."""

from __future__ import annotations

from relay.errors import MalformedBody, UnsupportedMediaType


def decode(data: bytes, charset: str | None, what: str = "body") -> str:
    """``data`` as text in ``charset`` (default UTF-8); MalformedBody or UnsupportedMediaType when not."""
    try:
        text = data.decode(charset or "utf-8")
        if not text.isascii():
            text.encode()  # codecs such as unicode_escape can make lone surrogates, which UTF-8 cannot hold
        return text
    except UnicodeEncodeError:
        raise MalformedBody(f"{what} decodes to unpaired surrogates in {charset}") from None
    except UnicodeDecodeError as exc:
        raise MalformedBody(f"{what} is not valid {charset or 'utf-8'}: byte {exc.start}") from None
    except (LookupError, ValueError):  # ValueError: a NUL in the name
        raise UnsupportedMediaType(f"unknown charset {charset!r}") from None


def require_text(text: str) -> None:
    """Refuse text holding a lone surrogate, which is no character (JSON escapes can make one)."""
    if not text.isascii():
        try:
            text.encode()
        except UnicodeEncodeError:
            raise MalformedBody(
                "body holds an unpaired surrogate (\\ud800-\\udfff), which is no character"
            ) from None
