"""The tweet as text encoders see it: tokens joined by spaces, URL tokens dropped on request."""
from __future__ import annotations

import re

URL = re.compile(r"^(https?://|www\.)", re.IGNORECASE)     # a token that is a web address


def tweet_text(tokens, drop_urls: bool) -> str:
    """The tweet as the sentence encoder sees it: tokens joined by spaces (URLs dropped)."""
    return " ".join(t for t in tokens if not (drop_urls and URL.match(t)))
