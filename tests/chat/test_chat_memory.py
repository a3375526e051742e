"""The chat's memory stays bounded: per-account state is trimmed, ended rooms
leave memory once saved (their transcript stays readable from SQLite), only
the reply window of messages is kept for replies; global blocklist terms are
normalised like room terms; muting or banning an author rejects their held
messages."""

import msgpack
import pytest
import trio

from shopcast.plugins._chat_engine import Author, ChatError, ChatLimits, ChatRoom, Role, decode_request_untrusted
from shopcast.plugins._storage import Database
from shopcast.server._chat_store import MIGRATIONS
from shopcast.server._interaction import InteractionService, InteractionSettings
from shopcast.server._relay import Relay

MOD = Author("m1", "Mod", Role.MODERATOR, registered=True)


def say(room, author, text, now):
    return room.submit(author, {"type": "message", "text": text}, now_s=now, media_timestamp_us=0)


def test_per_account_state_is_trimmed_once_it_no_longer_matters():
    room = ChatRoom("r", ChatLimits(bucket_capacity=2, bucket_refill_per_s=1, reaction_bucket_capacity=2,
                                    reaction_refill_per_s=1))
    room.set_mode(MOD, now_s=0, slow_mode_s=5)
    for i in range(100):
        viewer = Author(f"v{i}", f"V{i}")
        say(room, viewer, "hi", 0.0)
        room.react(viewer, "heart", now_s=0.0)
    room.mute(MOD, "v0", 10, now_s=0.0)
    room.trim(now_s=0.5)  # buckets not full yet, slow mode and mute running
    assert len(room._buckets) == 100 and len(room._last_message_s) == 100 and "v0" in room._muted_until
    room.trim(now_s=11.0)
    assert room._buckets == {} and room._reaction_buckets == {} and room._last_message_s == {}
    assert room._muted_until == {}
    room.take_unsaved()
    say(room, Author("v0", "V0"), "free again", 12.0)  # the expired mute is gone


def test_only_the_reply_window_of_messages_is_kept_for_replies():
    room = ChatRoom("r", ChatLimits(reply_window_messages=10, history_messages=5))
    first = say(room, MOD, "m0", 0.0)
    for i in range(1, 30):
        say(room, MOD, f"m{i}", float(i))
    assert len(room._visible) == 10
    with pytest.raises(ChatError) as info:
        room.submit(MOD, {"type": "message", "text": "re", "reply_to": first.id}, now_s=40.0,
                    media_timestamp_us=0)
    assert info.value.code == "unknown_reply"
    assert [m.text for m in room.history()] == [f"m{i}" for i in range(25, 30)]


def test_global_blocklist_terms_are_normalised_like_room_terms():
    service = InteractionService(Relay(), InteractionSettings(global_blocklist=("ＳＰＡＭ",)))
    room = service.room("r")
    with pytest.raises(ChatError) as info:
        say(room, Author("v", "V"), "cheap spam", 0.0)
    assert info.value.code == "blocked"


def test_muting_or_banning_an_author_rejects_their_held_messages():
    room = ChatRoom("r")
    room.set_blocklist(MOD, ["spam"], now_s=0)
    room.set_mode(MOD, now_s=0, hold_for_review=True)
    assert say(room, Author("a", "A"), "spam one", 1.0) is None
    assert say(room, Author("b", "B"), "spam two", 1.0) is None
    room.mute(MOD, "a", 60, now_s=2.0)
    room.ban(MOD, "b", now_s=2.0)
    assert room.held() == []
    assert [(m.text, status) for m, status in room.transcript()] == [
        ("spam one", "rejected"), ("spam two", "rejected")]


def test_the_request_map_size_is_a_bound():
    data = msgpack.packb({"type": "message", "text": "hi"})
    with pytest.raises(ChatError) as info:
        decode_request_untrusted(data, ChatLimits(max_request_fields=1))
    assert info.value.field == "request"
    assert decode_request_untrusted(data, ChatLimits(max_request_fields=2))["text"] == "hi"


async def test_an_ended_room_leaves_memory_once_saved_and_its_chat_stays_readable(tmp_path):
    relay = Relay()
    service = InteractionService(relay, InteractionSettings(save_interval_s=0.05, ended_room_keep_s=0.0))
    async with Database(tmp_path / "chat.db") as db:
        await db.open(MIGRATIONS)
        service.attach(db)
        async with trio.open_nursery() as nursery:
            await nursery.start(service.run)
            broadcast = relay.publish("r")
            room = await service.open_room("r")
            said = say(room, MOD, "goodbye 👋", service.clock())
            broadcast.end()
            with trio.fail_after(10):
                while "r" in service.rooms:
                    await trio.sleep(0.05)
            assert [(m.id, m.text, status) for m, status in await service.transcript("r")] == [
                (said.id, "goodbye 👋", "visible")]
            nursery.cancel_scope.cancel()


async def test_a_failed_save_loses_nothing(tmp_path):
    service = InteractionService(Relay())
    room = service.room("r")
    said = say(room, MOD, "kept", 1.0)
    room.mute(MOD, "v1", 60, now_s=1.0)
    async with Database(tmp_path / "chat.db") as db:
        await db.open([])  # no chat tables yet: the save fails
        service.attach(db)
        await service.save()
        assert service.save_failures == 1
        await db.migrate(MIGRATIONS)
        await service.save()
        assert [(m.id, status) for m, status in await service.transcript("r")] == [(said.id, "visible")]
        assert [(e.action, e.target) for e in await service.audit("r")] == [("mute", "v1")]
