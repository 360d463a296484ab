"""Message analysis for IMAP: ENVELOPE, BODYSTRUCTURE, BODY[section], SEARCH.

Pure functions over the raw octets of one message, as the mailbox logs hold
them: no I/O, no trio.  The IMAP bridge calls :func:`analyse` once per
message, caches the three results with the ``encode_*`` functions, and
answers FETCH and SEARCH from them:

- :func:`envelope` / :func:`bodystructure` / :func:`part_map` /
  :func:`analyse` parse (``_envelope``, ``_structure``, ``_parts``);
- :func:`section` and :func:`partial` cut BODY[section]<origin.octets> out of
  the raw bytes by the part map's offsets, so sizes in BODYSTRUCTURE and the
  octets of BODY[n] agree by construction;
- :func:`envelope_to_imap` / :func:`bodystructure_to_imap` give nested values
  for the IMAP encoder (``_imap`` documents the contract);
- :func:`matches` evaluates a SEARCH key tree (``_search``), and
  :func:`needs` says how much of the message a key reads.

Every parsing function accepts any bytes and never raises: real mail is
often not what the RFCs say.  The choices each module makes where the RFCs
leave room (and where they follow Dovecot) are in its docstring.
"""

from ams.message._address import MISSING_DOMAIN, MISSING_MAILBOX, Address
from ams.message._codec import (
    CacheFormatError,
    decode_envelope,
    decode_parts,
    decode_structure,
    encode_envelope,
    encode_parts,
    encode_structure,
)
from ams.message._envelope import Envelope, envelope
from ams.message._imap import Adjacent, ImapValue, bodystructure_to_imap, envelope_to_imap
from ams.message._mime import Params, decode_text, decode_transfer_encoding, decode_words
from ams.message._parts import Part, PartKind, Section, SectionLike, partial, section
from ams.message._search import (
    SIMPLE_KEYS,
    All,
    And,
    Bcc,
    Before,
    Body,
    Cc,
    Flag,
    From,
    Header,
    Larger,
    MessageInfo,
    ModSeq,
    Need,
    Not,
    NumberSet,
    On,
    Or,
    Recent,
    SearchKey,
    SentBefore,
    SentOn,
    SentSince,
    Sequence,
    SequenceSet,
    Since,
    Smaller,
    Subject,
    Text,
    To,
    Uid,
    matches,
    needs,
)
from ams.message._structure import (
    MAX_DEPTH,
    MAX_PARTS,
    Analysis,
    BodyStructure,
    Disposition,
    Multipart,
    SinglePart,
    analyse,
    bodystructure,
    part_map,
)

__all__ = [
    "MAX_DEPTH",
    "MAX_PARTS",
    "MISSING_DOMAIN",
    "MISSING_MAILBOX",
    "SIMPLE_KEYS",
    "Address",
    "Adjacent",
    "All",
    "Analysis",
    "And",
    "Bcc",
    "Before",
    "Body",
    "BodyStructure",
    "CacheFormatError",
    "Cc",
    "Disposition",
    "Envelope",
    "Flag",
    "From",
    "Header",
    "ImapValue",
    "Larger",
    "MessageInfo",
    "ModSeq",
    "Multipart",
    "Need",
    "Not",
    "NumberSet",
    "On",
    "Or",
    "Params",
    "Part",
    "PartKind",
    "Recent",
    "SearchKey",
    "Section",
    "SectionLike",
    "SentBefore",
    "SentOn",
    "SentSince",
    "Sequence",
    "SequenceSet",
    "Since",
    "SinglePart",
    "Smaller",
    "Subject",
    "Text",
    "To",
    "Uid",
    "analyse",
    "bodystructure",
    "bodystructure_to_imap",
    "decode_envelope",
    "decode_parts",
    "decode_structure",
    "decode_text",
    "decode_transfer_encoding",
    "decode_words",
    "encode_envelope",
    "encode_parts",
    "encode_structure",
    "envelope",
    "envelope_to_imap",
    "matches",
    "needs",
    "part_map",
    "partial",
    "section",
]
