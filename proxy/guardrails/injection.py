"""Prompt-injection heuristics: a score between 0 and 1 from weighted signals; the guardrail compares
it with its ``threshold``. Signals: instructions to ignore or reveal the system prompt, role-play
jailbreaks, payloads hidden in base64 or in invisible Unicode, and instructions inside tool results."""

from __future__ import annotations

import base64
import binascii
import re

import ahocorasick_rs

_I = re.IGNORECASE
# (words one of which the lowercased text must contain, pattern, weight): the words are a cheap
# test that skips the pattern for nearly every benign prompt.
_SIGNALS: tuple[tuple[tuple[str, ...], re.Pattern[str], float], ...] = (
    (("ignore", "disregard", "forget", "override", "bypass", "skip"),
     re.compile(r"\b(ignore|disregard|forget|override|bypass|skip)\b[^.\n]{0,40}\b(previous|prior|above|earlier|"
                r"preceding|all|any|every|your|the|system)\b[^.\n]{0,30}\b(instructions?|prompts?|rules|directions|"
                r"guidelines|polic(y|ies))", _I), 0.85),
    (("ignor", "vergiss", "忽略", "игнорир"),
     re.compile(r"\b(ignoriere|vergiss)\b.{0,40}\b(anweisungen|regeln|vorgaben)|\bignor(a|e[sz]?)\b.{0,40}"
                r"\b(instrucciones|instructions|istruzioni|instruções)|忽略.{0,10}(指令|指示|说明)|"
                r"игнорируй.{0,40}инструкци", _I), 0.85),
    (("prompt", "instruction", "rules", "message"),
     re.compile(r"\b(reveal|print|show|output|repeat|display|leak|tell me|give me|what (is|are|were) your)\b"
                r"[^.\n]{0,40}"
                r"\b(system|initial|hidden|original|secret|developer)\s+(prompt|instructions?|message|rules)", _I),
     0.75),
    (("above", "before", "so far"),
     re.compile(r"\b(repeat|print|output)\b[^.\n]{0,30}\b(everything|all|the text|words)\b[^.\n]{0,20}"
                r"\b(above|before|so far)", _I), 0.6),
    (("dan", "anything now", "developer mode", "jailbr", "god mode", "unfiltered", "evil"),
     re.compile(r"\b(DAN|do anything now|developer mode|jailbreak|jailbroken|god mode|unfiltered mode|"
                r"evil (ai|assistant|mode))\b", _I), 0.4),
    (("restriction", "filter", "censor", "bound by", "unrestricted", "uncensored", "guideline", "moral"),
     re.compile(r"\b(no|without( any)?|free of( all)?)\s+(restrictions|filters|censorship|(moral )?guidelines|"
                r"limitations)|\bnot bound by\b|\b(unrestricted|uncensored)\s+(ai|assistant|model|mode|version)", _I),
     0.4),
    (("restriction", "limits", "filter", "rules", "guideline", "censor", "ethic", "moral"),
     re.compile(r"\b(pretend|act|behave|roleplay|role-play|imagine)\b[^.\n]{0,60}\b(no|without|free of|"
                r"beyond)\b[^.\n]{0,30}\b(restrictions?|limits|filters?|rules|guidelines|censorship|ethics|"
                r"morals)", _I), 0.65),
    (("you are now", "you are no longer"),
     re.compile(r"\byou are (now|no longer)\b[^.\n]{0,60}\b(unrestricted|uncensored|free|not bound|"
                r"an? (ai|assistant|model) (that|who|without))", _I), 0.6),
    (("<|im_start|>", "inst]", "<<sys>>", "##", "instructions", "override"),
     re.compile(r"(<\|im_start\|>\s*system|\[/?INST\]|<</?SYS>>|^\s*#{2,}\s*(system|new instructions)|"
                r"\bnew (system )?instructions\s*:|\bsystem override\b|\badmin(istrator)? override\b)", _I | re.M),
     0.55),
)
# Extra weight for instructions inside a tool's result: data should not tell the assistant what to do.
_TOOL_SIGNALS = re.compile(r"\b(assistant|ai|model|agent)\b[,:]?\s+(you must|must now|should now|now)\b|"
                           r"\b(important|attention|note to (the )?(ai|assistant))\s*:|\binstead,?\s+(you|do|send)|"
                           r"\b(send|forward|email|upload|exfiltrate)\b[^.\n]{0,40}\b(to|at)\b[^.\n]{0,20}"
                           r"(https?://|@)", _I)
_WORDS = tuple(dict.fromkeys(word for words, _, _ in _SIGNALS for word in words))
# One pass finds every word present (each overlapping one too): ~4 µs on 2 KB where a substring test per word took ~37.
_WORDS_AC = ahocorasick_rs.AhoCorasick(_WORDS)
_GATES = tuple(frozenset(_WORDS.index(word) for word in words) for words, _, _ in _SIGNALS)
_BASE64 = re.compile(r"[A-Za-z0-9+/]{24,}={0,2}")
# Base64's characters as "a", any other ASCII as a space: a base64 run of 24 shows as "a" * 24 (translate is C-fast).
_BASE64_CLASS = str.maketrans({i: "a" if chr(i).isalnum() or chr(i) in "+/" else " " for i in range(128)})
_BASE64_RUN = "a" * 24
_TAGS = re.compile("[\U000e0000-\U000e007f]+")
_ZERO_WIDTH = re.compile("[\u200b-\u200f\u2060-\u2064\ufeff]")


def _combine(scores: list[float]) -> float:
    miss = 1.0
    for s in scores:
        miss *= 1.0 - s
    return 1.0 - miss


def score(text: str, tool_result: bool = False, depth: int = 0) -> float:
    """How much ``text`` looks like an injection attempt: 0 (nothing) to 1."""
    present = {i for i, _, _ in _WORDS_AC.find_matches_as_indexes(text.lower(), overlapping=True)}
    found = [w for gate, (_, pattern, w) in zip(_GATES, _SIGNALS, strict=True)
             if present and not gate.isdisjoint(present) and pattern.search(text)]
    if tool_result and _TOOL_SIGNALS.search(text):
        found.append(0.6)
    if depth == 0 and not text.isascii():
        hidden = _TAGS.findall(text)
        if hidden:  # Unicode tag characters spell ASCII no one sees
            found.append(0.7)
            decoded = "".join(chr(ord(c) - 0xE0000) for run in hidden for c in run)
            found.append(score(decoded, tool_result, 1))
        if len(_ZERO_WIDTH.findall(text)) >= 3:
            found.append(0.35)
            found.append(score(_ZERO_WIDTH.sub("", text), tool_result, 1))
    if depth == 0 and len(text) >= 24 and _BASE64_RUN in text.translate(_BASE64_CLASS):
        for m in _BASE64.finditer(text):
            inner = _decoded(m.group())
            if inner is not None:
                s = score(inner, tool_result, 1)
                if s:
                    found.append(min(1.0, s + 0.1))  # hiding it is a signal of its own
    return _combine(found) if found else 0.0


def _decoded(chunk: str) -> str | None:
    try:
        raw = base64.b64decode(chunk + "=" * (-len(chunk) % 4), validate=True)
        text = raw.decode("utf-8")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return None
    return text if text.isprintable() or "\n" in text else None
