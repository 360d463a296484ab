"""The bridge through imapclient, which parses ENVELOPE and BODYSTRUCTURE itself."""

from __future__ import annotations

import trio
from imapclient import IMAPClient

from ams.store import Store
from tests.conftest import MakeConfig
from tests.imap_helpers import plaintext, running_imap
from tests.mx_helpers import add_users
from tests.test_imap_bridge import multipart, seed


async def test_imapclient_parses_what_the_bridge_sends(make_config: MakeConfig) -> None:
    cfg = plaintext(make_config())
    store = Store.initialise(cfg)
    add_users(store, "alice")
    seed(store, "alice", 3)

    def client(port: int) -> None:
        with IMAPClient("127.0.0.1", port=port, ssl=False, timeout=10) as c:
            c.login("alice", "alice-pw")
            assert c.has_capability("IDLE") and c.has_capability("CONDSTORE")
            folders = {name for _flags, _delim, name in c.list_folders()}
            assert {"INBOX", "Sent", "Trash"} <= folders
            assert c.find_special_folder(b"\\Sent") == "Sent"
            info = c.select_folder("INBOX")
            assert info[b"EXISTS"] == 3 and info[b"UIDVALIDITY"] > 0
            uid = c.append("INBOX", multipart(), flags=[b"\\Flagged"])
            assert b"APPENDUID" in uid
            c.noop()
            msgs = c.search(["FROM", "Jürgen"], charset="UTF-8")
            assert msgs == [4]
            data = c.fetch(msgs, ["ENVELOPE", "BODYSTRUCTURE", "FLAGS", "RFC822.SIZE",
                                  "INTERNALDATE", "MODSEQ"])[4]
            env = data[b"ENVELOPE"]
            assert env.subject.startswith(b"=?utf-8?")
            assert env.from_[0].mailbox == b"juergen" and env.from_[0].host == b"x.test"
            bs = data[b"BODYSTRUCTURE"]
            assert bs.is_multipart and bs[1] == b"mixed"
            assert data[b"FLAGS"] == (b"\\Flagged",)
            assert data[b"MODSEQ"][0] > 0
            part = c.fetch(msgs, ["BODY.PEEK[1.2]"])[4][b"BODY[1.2]"]
            assert b"<b>Alice</b>" in part
            c.add_flags([1, 2], [b"\\Seen", b"$Work"])
            assert c.get_flags([1])[1] == (b"$Work", b"\\Seen")
            c.create_folder("Projekte/Köln")
            assert c.folder_exists("Projekte/Köln")
            c.move([2], "Projekte/Köln")
            assert c.folder_status("Projekte/Köln", ["MESSAGES"])[b"MESSAGES"] == 1
            c.select_folder("INBOX")
            c.idle()
            c.idle_done()
            c.delete_messages([1])
            c.expunge()
            assert c.select_folder("INBOX")[b"EXISTS"] == 2

    async with running_imap(cfg) as port:
        await trio.to_thread.run_sync(client, port)
