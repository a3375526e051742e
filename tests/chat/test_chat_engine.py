"""The chat engine without sockets: order, rate limits, slow mode,
moderation, batching and reactions, bad requests, and fan-out of batches to
1000 subscribers through a relay track."""

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shopcast.plugins._chat_engine import (
    Author,
    ChatError,
    ChatLimits,
    ChatRoom,
    Role,
    decode_request_untrusted,
    encode_batch,
)
from shopcast.server._relay import Relay

LIMITS = ChatLimits()
ALICE = Author("a1", "Alice", registered=True)
BOB = Author("b1", "Bob")
HOST = Author("h1", "Host", Role.HOST, registered=True)
MOD = Author("m1", "Mod", Role.MODERATOR, registered=True)


def say(room, author, text, now, reply_to=None):
    request = {"type": "message", "text": text}
    if reply_to is not None:
        request["reply_to"] = reply_to
    return room.submit(author, request, now_s=now, media_timestamp_us=int(now * 1e6))


def test_messages_are_published_in_order_once_per_tick():
    room = ChatRoom("r")
    first = say(room, ALICE, "hello 👋", 0.0)
    say(room, BOB, "hi!", 0.01)
    say(room, HOST, "welcome", 0.02)
    batch = room.tick(now_s=0.05)
    assert [m.text for m in batch.messages] == ["hello 👋", "hi!", "welcome"]
    assert [m.id for m in batch.messages] == [1, 2, 3]
    assert batch.messages[2].from_host and not batch.messages[0].from_host
    assert first.media_timestamp_us == 0
    assert room.tick(now_s=0.06) is None  # nothing new
    reply = say(room, BOB, "@Alice hi", 0.1, reply_to=first.id)
    assert reply.reply_to == first.id
    with pytest.raises(ChatError) as info:
        say(room, BOB, "to nowhere", 0.2, reply_to=999)
    assert info.value.field == "reply_to"


def test_token_bucket_then_flood_mute_with_notice():
    room = ChatRoom("r", ChatLimits(bucket_capacity=3, bucket_refill_per_s=1, flood_strikes=2,
                                    flood_mute_s=30))
    for i in range(3):
        say(room, BOB, f"m{i}", 0.0)
    with pytest.raises(ChatError) as info:
        say(room, BOB, "too fast", 0.0)
    assert info.value.code == "rate_limited" and info.value.retry_after_s > 0
    with pytest.raises(ChatError) as info:
        say(room, BOB, "still too fast", 0.1)
    assert info.value.code == "flood_muted" and info.value.retry_after_s == 30
    with pytest.raises(ChatError) as info:
        say(room, BOB, "after a while", 10.0)
    assert info.value.code == "muted"
    assert say(room, BOB, "back", 31.0) is not None
    assert room.audit[-1].action == "mute" and "flooding" in room.audit[-1].detail
    say(room, ALICE, "others unaffected", 0.2)


def test_slow_mode_and_modes():
    room = ChatRoom("r")
    with pytest.raises(ChatError):
        room.set_mode(MOD, now_s=0, slow_mode_s=301)
    room.set_mode(MOD, now_s=0, slow_mode_s=10)
    say(room, ALICE, "one", 1.0)
    with pytest.raises(ChatError) as info:
        say(room, ALICE, "two", 5.0)
    assert info.value.code == "slow_mode" and info.value.retry_after_s == pytest.approx(6)
    say(room, ALICE, "two", 11.0)
    say(room, HOST, "hosts are never slowed", 11.1)
    say(room, HOST, "again", 11.2)
    room.set_mode(MOD, now_s=12, slow_mode_s=0, registered_only=True)
    with pytest.raises(ChatError) as info:
        say(room, BOB, "anonymous", 13.0)
    assert info.value.code == "registered_only"
    room.set_mode(MOD, now_s=14, registered_only=False, followers_only=True)
    with pytest.raises(ChatError) as info:
        say(room, ALICE, "not a follower", 15.0)
    assert info.value.code == "followers_only"
    fan = Author("f1", "Fan", follows_host=True)
    say(room, fan, "a follower", 15.0)


def test_mute_makes_messages_disappear_and_ban_stops_everything():
    room = ChatRoom("r")
    m1 = say(room, BOB, "spam 1", 0.0)
    say(room, ALICE, "fine", 0.01)
    room.tick(now_s=0.1)
    room.mute(MOD, BOB.account_id, 60, now_s=0.2)
    batch = room.tick(now_s=0.3)
    assert batch.deleted == [m1.id]
    assert [m.text for m in room.history()] == ["fine"]
    with pytest.raises(ChatError):
        say(room, BOB, "muted", 1.0)
    room.ban(HOST, "a1", now_s=2.0)
    assert room.is_banned("a1")
    with pytest.raises(ChatError) as info:
        say(room, ALICE, "banned", 3.0)
    assert info.value.code == "banned"
    with pytest.raises(ChatError):
        room.react(ALICE, "like", now_s=3.0)
    assert [e.action for e in room.audit] == ["mute", "ban"]


def test_blocklists_refuse_or_hold_for_review():
    room = ChatRoom("r", global_blocklist={"scam"})
    room.set_blocklist(MOD, ["Fake Watch"], now_s=0)
    with pytest.raises(ChatError) as info:
        say(room, BOB, "cheap ＦＡＫＥ watch here", 1.0)  # full-width letters fold too
    assert info.value.code == "blocked"
    with pytest.raises(ChatError):
        say(room, BOB, "a SCAM link", 2.0)
    room.set_mode(MOD, now_s=3, hold_for_review=True)
    assert say(room, BOB, "scam?", 4.0) is None
    assert say(room, ALICE, "normal", 4.1) is not None
    held = room.held()
    assert [m.text for m in held] == ["scam?"]
    assert [m.text for m in room.tick(now_s=5.0).messages] == ["normal"]
    room.approve(MOD, held[0].id, now_s=6.0)
    assert [m.text for m in room.tick(now_s=7.0).messages] == ["scam?"]
    say(room, BOB, "another scam", 8.0)
    room.reject(MOD, room.held()[0].id, now_s=9.0)
    statuses = [status for _, status in room.transcript()]
    assert statuses == ["visible", "visible", "rejected"]
    assert [e.action for e in room.audit][-3:] == ["mode", "approve", "reject"]


def test_viewers_cannot_moderate():
    room = ChatRoom("r")
    message = say(room, ALICE, "x", 0)
    for action in (lambda: room.delete(BOB, message.id, now_s=1),
                   lambda: room.mute(BOB, "a1", 10, now_s=1),
                   lambda: room.ban(BOB, "a1", now_s=1),
                   lambda: room.set_blocklist(BOB, ["x"], now_s=1),
                   lambda: room.set_mode(BOB, now_s=1, slow_mode_s=5)):
        with pytest.raises(ChatError) as info:
            action()
        assert info.value.code == "forbidden"
    assert list(room.audit) == []


def test_reactions_are_counted_per_interval_never_one_by_one():
    room = ChatRoom("r")
    for i in range(500):  # 500 viewers, each within their own reaction bucket
        room.react(Author(f"v{i}", f"V{i}"), "heart", now_s=0.0)
    room.react(ALICE, "like", now_s=0.0)
    batch = room.tick(now_s=0.1)
    assert batch.messages == [] and batch.reactions == {"heart": 500, "like": 1}
    room.react(BOB, "heart", now_s=0.12)
    assert room.tick(now_s=0.15) is None  # within the reaction interval
    assert room.tick(now_s=0.25).reactions == {"heart": 1}
    with pytest.raises(ChatError) as info:
        room.react(BOB, "poop", now_s=1)
    assert info.value.field == "kind"


def test_reactions_have_a_token_bucket_and_the_silenced_may_not_react():
    room = ChatRoom("r", ChatLimits(reaction_bucket_capacity=3, reaction_refill_per_s=2))
    for _ in range(3):
        room.react(BOB, "heart", now_s=0.0)
    with pytest.raises(ChatError) as info:
        room.react(BOB, "heart", now_s=0.1)
    assert info.value.code == "rate_limited" and info.value.retry_after_s == pytest.approx(0.4)
    room.react(BOB, "heart", now_s=0.6)  # one earned back
    room.react(ALICE, "like", now_s=0.1)  # others unaffected
    room.mute(MOD, BOB.account_id, 60, now_s=1.0)
    with pytest.raises(ChatError) as info:
        room.react(BOB, "heart", now_s=5.0)
    assert info.value.code == "muted"
    room.ban(MOD, ALICE.account_id, now_s=1.0)
    with pytest.raises(ChatError) as info:
        room.react(ALICE, "like", now_s=5.0)
    assert info.value.code == "banned"
    assert room.tick(now_s=6.0).reactions == {"heart": 4, "like": 1}


def test_history_keeps_the_last_n():
    room = ChatRoom("r", ChatLimits(history_messages=3, bucket_capacity=100))
    for i in range(10):
        say(room, ALICE, f"m{i}", i)
    assert [m.text for m in room.history()] == ["m7", "m8", "m9"]


@pytest.mark.parametrize("data, field", [
    (msgpack.packb({"type": "message", "text": "x" * 501}), "text"),
    (msgpack.packb({"type": "message", "text": 5}), "text"),
    (msgpack.packb({"type": "shout", "text": "x"}), "type"),
    (msgpack.packb({"type": "message", "text": "x", "admin": True}), "admin"),
    (msgpack.packb(["message", "x"]), "request"),
    (b"\xa3\xff\xfe\xfd", "request"),                          # a str that is not UTF-8
    (b"\x91" * 5000 + b"\xc0", "request"),                     # nested 5000 deep
    (b"\xdb\xff\xff\xff\xff" + b"a" * 10, "request"),          # declares a 4 GiB string
    (b"\xdf\xff\xff\xff\xff", "request"),                      # declares 4 billion map entries
    (msgpack.packb({"type": "message", "text": "a\x1b[2Jb"}), "text"),  # terminal escapes
    (b"x" * 5000, "request"),
    (msgpack.packb({"type": "message", "text": "ok"}) * 2, "request"),
])
def test_bad_requests_are_refused_naming_the_field(data, field):
    room = ChatRoom("r")
    with pytest.raises(ChatError) as info:
        request = decode_request_untrusted(data, LIMITS)
        room.submit(BOB, request, now_s=0, media_timestamp_us=0)
    assert info.value.field == field
    # The room keeps working for everyone else.
    assert say(room, ALICE, "still chatting", 1.0) is not None


@settings(max_examples=300)
@given(st.binary(max_size=300))
def test_any_bytes_give_a_request_or_chat_error(data):
    try:
        decode_request_untrusted(data, LIMITS)
    except ChatError:
        pass


async def test_a_thousand_subscribers_receive_every_batch_in_the_same_order():
    relay = Relay()
    track = relay.publish("room").track("chat")

    class Sink:
        def __init__(self):
            self.objects = []

        def group_started(self, track, group):
            pass

        def frame(self, track, group, payload):
            self.objects.append(payload)

        def group_ended(self, track, group):
            pass

        def track_ended(self, track):
            pass

    sinks = [Sink() for _ in range(1000)]
    for sink in sinks:
        track.subscribe(sink)
    room = ChatRoom("room", ChatLimits(bucket_capacity=1000))
    now = 0.0
    sent = []
    for burst in range(20):
        for i in range(25):
            sent.append(say(room, Author(f"u{i}", f"User {i}"), f"burst {burst} msg {i} 🎉", now).id)
        now += 0.06  # one tick (50 ms) and a little
        batch = room.tick(now_s=now)
        track.write_frame(encode_batch(batch), keyframe=(burst % 10 == 0))
    expected = sinks[0].objects
    received_ids = [m["id"] for obj in expected for m in msgpack.unpackb(obj)["messages"]]
    assert received_ids == sent
    assert all(sink.objects == expected for sink in sinks)
