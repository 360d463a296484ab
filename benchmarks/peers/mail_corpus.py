"""A deterministic corpus of realistic mail, and the answers a server must give about it.

Used by the IMAP benchmark (benchmarks/bench_imap.py) to fill AMS and its
peer with the same messages.  :class:`Corpus` makes message *i* from a random
generator seeded with (seed, *i*): a message does not depend on how many
others are made, and every run sees the same bytes.

What the messages look like: one or two Received fields; From, To (some
with a second or third address, a few the group ``undisclosed-recipients:;``),
Cc on 30%, Reply-To on 5%; display names plain, quoted (``"Last, First"``),
absent, or as RFC 2047 encoded words (B and Q, UTF-8, split over several
words); Subjects of ordinary words, 12% as encoded words, 0.5% raw UTF-8
(RFC 6532), 30% replies (``Re:`` and In-Reply-To); Dates about 40 s apart in
a dozen zones; Message-IDs all in :data:`MID_DOMAIN`.  Bodies are about 300
bytes to 4 KB (log-uniform): 60% a single text/plain part (7bit, or
quoted-printable UTF-8 for 15% of messages), 20% multipart/alternative (text
+ HTML), 20% multipart/mixed with a base64 attachment (binary, or a text
file).  About 80% are \\Seen, 10% \\Answered, 4% \\Flagged.

About 1% of messages contain :data:`WORD` (any case): in the body text, in
the Subject (inside an encoded word when the Subject is one), or in a base64
text attachment, so a server finds them all only if it decodes what it
searches.  No message contains :data:`ABSENT`.  :class:`Truth` accumulates
what the corpus says a server must answer: flag counts, Message-ID counts,
and which messages hold the word.
"""

from __future__ import annotations

import base64
import math
import quopri
import random
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from email.utils import format_datetime

SEED = 20261126
LOCAL_DOMAIN = "example.test"
RECIPIENT = f"bench@{LOCAL_DOMAIN}"
#: Every Message-ID (and so every In-Reply-To) is in this domain.
MID_DOMAIN = "mid.ams-bench.example"
WORD = "quokka"
ABSENT = "zyzzogeton"

FIRST = ("Alice", "Bob", "Carol", "Dave", "Erin", "Frank", "Grace", "Heidi", "Ivan", "Judy",
         "Mallory", "Niaj", "Olivia", "Peggy", "Rupert", "Sybil", "Trent", "Victor", "Walter",
         "Yolanda", "Zachary", "Priya", "Kenji", "Amara", "Lars", "Mei", "Tomasz", "Ingrid")
LAST = ("Smith", "Jones", "Taylor", "Brown", "Wilson", "Evans", "Thomas", "Johnson", "Roberts",
        "Walker", "Wright", "Thompson", "Hughes", "Edwards", "Green", "Hall", "Wood", "Harris",
        "Clarke", "Patel", "Nakamura", "Okafor", "Lindqvist", "Kowalski", "Chen", "Garcia")
UTF8_NAMES = ("Jürgen Müller", "Zoë Ångström", "François Lefèvre", "Søren Kierkegård",
              "José Núñez", "Łukasz Wójcik", "田中 太郎", "Дмитрий Иванов", "Ελένη Παππά",
              "Renée Dubois", "Björk Guðmundsdóttir", "Ahmet Yılmaz")
DOMAINS = ("example.org", "mail.example.net", "lists.example.com", "corp.example",
           "uni.example.edu", "research.example.org", "dept.example.ac")
WORDS = tuple("""the of and to in is that for it as was with be by on not he this are or his
from at which but have an they you were her she there been one all we their has would when
if so no will more can out up other into could time than some them only its new these two
may first then do any like my now over such our man me even most made after also did many
before must through back years where much your way well down should because each just those
people how too little state good very make world still own see men work long here get both
between life being under never day same another know while last might us great old year off
come since against go came right used take three meeting budget report schedule release
server mailbox review draft project quarterly migration cluster network storage backup
invoice contract proposal agenda minutes deadline feedback update weekly notes question
issue patch build deploy monitor latency throughput archive index folder thread""".split())
UTF8_WORDS = ("café", "naïve", "Grüße", "Zürich", "façade", "smörgåsbord", "jalapeño",
              "日本語", "привет", "Ελλάδα", "crème brûlée", "Straße")
ZONES = (0, 0, 60, 120, -300, -420, -240, 330, 540, 600, -180, 480)
BASE_DATE = 1_700_000_000  # 2023-11-14; message i is dated about 40 s after message i-1


@dataclass(frozen=True)
class Message:
    lf: bytes  # LF line ends (Maildir's form)
    flags: tuple[str, ...]
    date: int  # internal date, seconds since the epoch (strictly increasing with i)
    tz_minutes: int
    has_word: bool
    mid_refs: int  # Message-ID plus In-Reply-To values in MID_DOMAIN

    @property
    def crlf(self) -> bytes:
        return self.lf.replace(b"\n", b"\r\n")


def _encoded_word(text: str, r: random.Random) -> str:
    """RFC 2047 encoded words for ``text``, each under 75 characters."""
    out = []
    chunk = ""
    for ch in text:
        if len((chunk + ch).encode()) > 30:
            out.append(chunk)
            chunk = ""
        chunk += ch
    if chunk:
        out.append(chunk)
    words = []
    for c in out:
        if r.random() < 0.5:
            words.append("=?UTF-8?B?" + base64.b64encode(c.encode()).decode() + "?=")
        else:
            q = "".join(ch if ch.isascii() and ch.isalnum() else
                        "_" if ch == " " else "".join(f"={b:02X}" for b in ch.encode())
                        for ch in c)
            words.append("=?UTF-8?Q?" + q + "?=")
    return "\n ".join(words)


class Corpus:
    """Deterministic messages: message ``i`` depends only on (seed, i)."""

    def __init__(self, seed: int = SEED) -> None:
        self.seed = seed

    def message(self, i: int) -> Message:
        r = random.Random(self.seed * 1_000_003 + i)
        date = BASE_DATE + 40 * i + r.randrange(40)
        tz = r.choice(ZONES)
        when = datetime.fromtimestamp(date, timezone(timedelta(minutes=tz)))
        has_word = r.random() < 0.01
        where = r.choice(("body", "body", "body", "subject", "attachment")) if has_word else ""
        kind = r.random()
        if where == "attachment" and kind < 0.92:
            kind = 0.95  # multipart/mixed with a text attachment
        utf8_body = r.random() < 0.15
        reply = r.random() < 0.3

        subject_words = [r.choice(WORDS) for _ in range(r.randint(2, 8))]
        if where == "subject":
            subject_words.insert(r.randrange(len(subject_words) + 1),
                                 r.choice((WORD, WORD.capitalize())))
        subject = " ".join(subject_words).capitalize()
        raw_utf8_subject = False
        s = r.random()
        if s < 0.12:
            subject = _encoded_word(subject + " " + r.choice(UTF8_WORDS), r)
        elif s < 0.125:
            subject = subject + " " + r.choice(UTF8_WORDS)  # raw UTF-8 (RFC 6532)
            raw_utf8_subject = True
        if reply:
            subject = "Re: " + subject

        h = [f"Received: from mx{r.randrange(9)}.{r.choice(DOMAINS)} "
             f"(mx.{r.choice(DOMAINS)} [192.0.2.{r.randrange(1, 255)}])\n"
             f"\tby mail.{LOCAL_DOMAIN} with ESMTPS id {r.getrandbits(48):012X}\n"
             f"\tfor <{RECIPIENT}>; {format_datetime(when)}"]
        if r.random() < 0.5:
            h.append(f"Received: from [198.51.100.{r.randrange(1, 255)}] by "
                     f"smtp.{r.choice(DOMAINS)} with ESMTPSA; {format_datetime(when)}")
        h.append(f"From: {self._address(r)}")
        if r.random() < 0.005:
            h.append("To: undisclosed-recipients:;")
        else:
            to = [f"Bench User <{RECIPIENT}>"]
            to += [self._address(r) for _ in range(r.choice((0, 0, 0, 1, 2)))]
            h.append("To: " + ",\n ".join(to))
        if r.random() < 0.3:
            h.append("Cc: " + ",\n ".join(self._address(r) for _ in range(r.randint(1, 4))))
        if r.random() < 0.05:
            h.append(f"Reply-To: {self._address(r)}")
        h.append(f"Subject: {subject}")
        h.append(f"Date: {format_datetime(when)}")
        h.append(f"Message-ID: <{i}.{r.getrandbits(40):010x}@{MID_DOMAIN}>")
        mid_refs = 1
        if reply and i > 0:
            parent = r.randrange(max(0, i - 500), i)
            h.append(f"In-Reply-To: <{parent}.{r.getrandbits(40):010x}@{MID_DOMAIN}>")
            mid_refs += 1
        h.append("MIME-Version: 1.0")

        size = int(math.exp(r.uniform(math.log(300), math.log(4000))))
        text = self._text(r, size, utf8_body, WORD if where == "body" else None)
        charset = "utf-8" if utf8_body else "us-ascii"
        if kind < 0.60:
            h += _text_part_headers("plain", charset)
            body = _encode_text(text, utf8_body)
        elif kind < 0.80:
            b = f"alt-{r.getrandbits(64):016x}"
            h.append(f'Content-Type: multipart/alternative; boundary="{b}"')
            html = "<html><body>\n" + "".join(f"<p>{p}</p>\n" for p in text.split("\n\n")) \
                + "</body></html>\n"
            body = (f"--{b}\n" + "\n".join(_text_part_headers("plain", charset)) + "\n\n"
                    + _encode_text(text, utf8_body) + f"\n--{b}\n"
                    + "\n".join(_text_part_headers("html", charset)) + "\n\n"
                    + _encode_text(html, utf8_body) + f"\n--{b}--\n")
        else:
            b = f"mix-{r.getrandbits(64):016x}"
            h.append(f'Content-Type: multipart/mixed; boundary="{b}"')
            if kind < 0.92:
                blob = r.randbytes(r.randint(200, 1500))
                att_headers = ["Content-Type: application/octet-stream",
                               'Content-Disposition: attachment; filename="data.bin"']
            else:
                note = self._text(r, r.randint(200, 1200), False,
                                  WORD if where == "attachment" else None)
                blob = note.encode()
                att_headers = ['Content-Type: text/plain; charset=us-ascii; name="notes.txt"',
                               'Content-Disposition: attachment; filename="notes.txt"']
            b64 = base64.encodebytes(blob).decode()
            body = (f"This is a multi-part message in MIME format.\n\n--{b}\n"
                    + "\n".join(_text_part_headers("plain", charset)) + "\n\n"
                    + _encode_text(text, utf8_body) + f"\n--{b}\n"
                    + "\n".join([*att_headers, "Content-Transfer-Encoding: base64"]) + "\n\n"
                    + b64 + f"--{b}--\n")
        flags = []
        if r.random() < 0.8:
            flags.append("\\Seen")
        if r.random() < 0.1:
            flags.append("\\Answered")
        if r.random() < 0.04:
            flags.append("\\Flagged")
        head = "\n".join(h) + "\n\n"
        raw = head.encode("utf-8") + body.encode("ascii")
        assert raw_utf8_subject or raw.isascii()
        return Message(raw, tuple(flags), date, tz, has_word, mid_refs)

    @staticmethod
    def _address(r: random.Random) -> str:
        first, last = r.choice(FIRST), r.choice(LAST)
        mailbox = f"{first.lower()}.{last.lower()}@{r.choice(DOMAINS)}"
        x = r.random()
        if x < 0.1:
            return f"{_encoded_word(r.choice(UTF8_NAMES), r)} <{mailbox}>"
        if x < 0.2:
            return mailbox
        if x < 0.25:
            return f'"{last}, {first}" <{mailbox}>'
        return f"{first} {last} <{mailbox}>"

    @staticmethod
    def _text(r: random.Random, size: int, utf8: bool, word: str | None) -> str:
        """Paragraphs of lines under 76 characters, about ``size`` bytes."""
        words = [r.choice(UTF8_WORDS) if utf8 and r.random() < 0.05 else r.choice(WORDS)
                 for _ in range(max(8, size // 6))]
        if word:
            words.insert(r.randrange(len(words)), r.choice((word, word.capitalize())))
        lines, line = [], ""
        for w in words:
            if len(line) + len(w) + 1 > 72:
                lines.append(line)
                line = ""
                if r.random() < 0.15:
                    lines.append("")
            line = f"{line} {w}" if line else w
        lines.append(line)
        return "\n".join(lines) + "\n"


def _text_part_headers(subtype: str, charset: str) -> list[str]:
    cte = "quoted-printable" if charset == "utf-8" else "7bit"
    return [f"Content-Type: text/{subtype}; charset={charset}",
            f"Content-Transfer-Encoding: {cte}"]


def _encode_text(text: str, utf8: bool) -> str:
    if not utf8:
        return text
    return quopri.encodestring(text.encode("utf-8")).decode("ascii")


@dataclass
class Truth:
    """What the corpus says the servers must answer, for the messages added."""

    n: int = 0
    seen: int = 0
    flagged: int = 0
    mid_refs: int = 0
    word: list[int] = field(default_factory=list)  # sequence numbers (1-based)
    bytes_lf: int = 0

    def add(self, i: int, m: Message) -> None:
        """Message ``i`` of the corpus, added as sequence number ``self.n + 1``."""
        self.n += 1
        self.seen += "\\Seen" in m.flags
        self.flagged += "\\Flagged" in m.flags
        self.mid_refs += m.mid_refs
        self.bytes_lf += len(m.lf)
        if m.has_word:
            self.word.append(self.n)


__all__ = ["ABSENT", "Corpus", "MID_DOMAIN", "Message", "RECIPIENT", "SEED", "Truth", "WORD"]
