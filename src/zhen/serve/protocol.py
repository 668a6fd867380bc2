"""LibreTranslate's API as this server speaks it: request fields in, answers out.

LibreTranslate (https://libretranslate.com/docs) is what self-hosted translation clients speak:

    POST /translate  q (a string or a list of strings), source ("zh" or "auto"), target ("en"), format ("text"),
                     alternatives (N extra translations), api_key  →  {"translatedText": …, "alternatives": …,
                     "detectedLanguage": {"confidence": 0-100, "language": "zh"} (for source "auto")}
    POST /detect     q  →  [{"confidence": 0-100, "language": "zh"}, …]
    GET  /languages  →  [{"code": "zh", "name": "Chinese", "targets": ["en"]}, …]

Fields come as JSON or as a form (urlencoded, or multipart), plus the query string, as LibreTranslate takes
them; `libretranslatepy` sends forms. zhen adds one request field, `scores` (true: the answer carries each
translation's score, the length-normalised log-probability, best first), which other clients never send.

A text is translated line by line (each line is one sequence for the model, as LibreTranslate keeps line
breaks) and its lines are joined again with "\\n". For a text of several lines, alternative k joins each
line's k-th best translation (or its best, where a line has fewer).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl

from starlette.requests import Request

from zhen.serve.errors import ApiError

# Source codes taken as Chinese. Traditional input is converted to Simplified by the model's own normalisation.
CHINESE = frozenset({"zh", "zh-hans", "zh-hant", "zh-cn", "zh-tw", "zh-hk", "zh-sg", "zt"})
ENGLISH = frozenset({"en", "en-us", "en-gb"})
LANGUAGES = [{"code": "zh", "name": "Chinese", "targets": ["en"]}, {"code": "en", "name": "English", "targets": []}]
_HAN = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0003134f]")
_LATIN = re.compile(r"[A-Za-z]")


@dataclass(frozen=True)
class TranslateRequest:
    """A /translate request, checked: what to translate and what to answer."""

    texts: list[str]  # q, as a list
    batch: bool  # q was a list: the answer's fields are lists too
    auto: bool  # source "auto": the answer says which language was detected
    alternatives: int  # extra translations per text
    scores: bool  # zhen's extension: the answer carries the scores


# ----------------------------------------------------------------------------- reading fields


async def read_fields(request: Request) -> dict[str, Any]:
    """The request's fields: the query string, then a form or a JSON object (JSON alone when sent)."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    fields: dict[str, Any] = dict(request.query_params)
    if content_type == "multipart/form-data":
        form = await request.form()
        fields.update({key: value for key, value in form.items() if isinstance(value, str)})
        return fields
    body = await request.body()
    if not body:
        return fields
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ApiError(400, f"Invalid request: the body is not valid UTF-8 (byte {error.start})") from None
    is_json = content_type == "application/json" or content_type.endswith("+json")
    if is_json or (not content_type and text.lstrip().startswith("{")):
        return _json_object(text)
    if content_type in ("", "application/x-www-form-urlencoded"):
        for key, value in _form_pairs(text):
            fields.setdefault(key, value)  # the first value of a repeated field, as Flask's .get gives it
        return fields
    raise ApiError(400, f"Invalid request: unsupported Content-Type {content_type!r}; send JSON or a form")


def _json_object(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise ApiError(400, f"Invalid JSON: {error.msg} at line {error.lineno}, column {error.colno}") from None
    except RecursionError:
        raise ApiError(400, "Invalid JSON: nested too deeply") from None
    if not isinstance(value, dict):
        raise ApiError(400, "Invalid JSON format: expected an object with the fields q, source, target")
    return value


def _form_pairs(text: str) -> list[tuple[str, str]]:
    try:
        return parse_qsl(text, keep_blank_values=True, encoding="utf-8", errors="strict")
    except UnicodeDecodeError:
        raise ApiError(400, "Invalid request: a form field is not valid UTF-8 once %-decoded") from None


# ----------------------------------------------------------------------------- checking fields


def parse_translate(fields: Mapping[str, Any], max_alternatives: int) -> TranslateRequest:
    """Check a /translate request's fields (LibreTranslate's messages where it has them)."""
    texts, batch = _texts(fields.get("q"))
    source = _required(fields, "source").lower()
    target = _required(fields, "target").lower()
    if source != "auto" and source not in CHINESE:
        raise ApiError(400, f"{fields['source']} is not supported: this server translates Chinese (zh) to English")
    if target not in ENGLISH:
        raise ApiError(400, f"{fields['target']} is not supported: this server translates Chinese to English (en)")
    text_format = fields.get("format") or "text"
    if text_format != "text":
        raise ApiError(400, f"{text_format} format is not supported: this server translates plain text (text)")
    alternatives = _alternatives(fields.get("alternatives", 0), max_alternatives)
    return TranslateRequest(texts, batch, source == "auto", alternatives, _flag(fields.get("scores")))


def parse_text(fields: Mapping[str, Any]) -> str:
    """The one string q of /detect and /api/explain."""
    q = fields.get("q")
    if q is None or q == "":
        raise ApiError(400, "Invalid request: missing q parameter")
    if not isinstance(q, str):
        raise ApiError(400, "Invalid request: q must be a string")
    return q


def _texts(q: Any) -> tuple[list[str], bool]:
    if q is None or q == "" or q == []:
        raise ApiError(400, "Invalid request: missing q parameter")
    if isinstance(q, str):
        return [q], False
    if not isinstance(q, list):
        raise ApiError(400, "Invalid request: q must be a string or a list of strings")
    for index, text in enumerate(q):
        if not isinstance(text, str):
            raise ApiError(400, f"Invalid request: q[{index}] is not a string")
    return q, True


def _required(fields: Mapping[str, Any], name: str) -> str:
    value = fields.get(name)
    if value is None or value == "":
        raise ApiError(400, f"Invalid request: missing {name} parameter")
    if not isinstance(value, str):
        raise ApiError(400, f"Invalid request: {name} must be a string")
    return value


def _alternatives(value: Any, limit: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ApiError(400, "Invalid request: alternatives parameter is not a number")
    try:
        number = max(0, int(value))  # LibreTranslate takes a negative count as 0
    except ValueError:
        raise ApiError(400, "Invalid request: alternatives parameter is not a number") from None
    if number > limit:
        raise ApiError(400, f"Invalid request: alternatives parameter must be <= {limit}")
    return number


def _flag(value: Any) -> bool:
    return value is True or (isinstance(value, str) and value.lower() in ("1", "true", "yes", "on"))


# ----------------------------------------------------------------------------- answers


def split_lines(texts: Sequence[str]) -> tuple[list[str], list[int]]:
    """Every text's lines, one list; and how many lines each text has (an empty text is one empty line)."""
    lines: list[str] = []
    counts: list[int] = []
    for text in texts:
        parts = text.splitlines() or [""]
        lines += parts
        counts.append(len(parts))
    return lines, counts


def translate_answer(request: TranslateRequest, counts: Sequence[int], results: Sequence[Sequence[Any]]) -> dict:
    """The /translate answer from each line's n-best list (`Translation`s with .text and .score)."""
    candidates, offset = [], 0
    for count in counts:
        candidates.append(_joined(results[offset : offset + count], 1 + request.alternatives))
        offset += count

    def shaped(values: list) -> Any:
        return values if request.batch else values[0]

    answer: dict[str, Any] = {"translatedText": shaped([c[0][0] for c in candidates])}
    if request.auto:
        answer["detectedLanguage"] = shaped([_detected(text) for text in request.texts])
    if request.alternatives:
        answer["alternatives"] = shaped([[text for text, _ in c[1:]] for c in candidates])
    if request.scores:
        answer["scores"] = shaped([[round(score, 4) for _, score in c] for c in candidates])
    return answer


def _joined(lines: Sequence[Sequence[Any]], wanted: int) -> list[tuple[str, float]]:
    """Up to `wanted` distinct (text, score) candidates for a text: candidate k joins each line's k-th best."""
    candidates: list[tuple[str, float]] = []
    for k in range(max(len(hyps) for hyps in lines)):
        chosen = [hyps[min(k, len(hyps) - 1)] for hyps in lines]
        text = "\n".join(h.text for h in chosen)
        scored = [h.score for h in chosen if h.text]
        score = sum(scored) / len(scored) if scored else 0.0
        if all(text != seen for seen, _ in candidates):  # LibreTranslate's alternatives are distinct
            candidates.append((text, score))
        if len(candidates) == wanted:
            break
    return candidates


def detect_languages(text: str) -> list[dict[str, Any]]:
    """/detect: candidates by script, best first, confidence 0-100 (the share of Han or Latin letters).

    This server translates only Chinese; the answer helps a client see whether a text is Chinese at all."""
    han, latin = len(_HAN.findall(text)), len(_LATIN.findall(text))
    total = han + latin
    if not total:
        return [{"confidence": 0.0, "language": "zh"}]
    found = [{"confidence": round(100 * han / total, 1), "language": "zh"},
             {"confidence": round(100 * latin / total, 1), "language": "en"}]
    return sorted((c for c in found if c["confidence"] > 0), key=lambda c: -c["confidence"])


def _detected(text: str) -> dict[str, Any]:
    """What source "auto" reports: always Chinese (the only source this server has), with its confidence."""
    han, latin = len(_HAN.findall(text)), len(_LATIN.findall(text))
    return {"confidence": round(100 * han / (han + latin), 1) if han else 0.0, "language": "zh"}
