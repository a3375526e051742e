"""The public surface of shopcast.codecs, the [media] config section and the kernel conventions."""

import dataclasses
import inspect
import pathlib
import tomllib

import shopcast.codecs
from shopcast.codecs import MediaConfig, _jit, warmup

ROOT = pathlib.Path(__file__).resolve().parents[2]


def test_all_names_exist_and_nothing_public_is_left_out():
    exported = set(shopcast.codecs.__all__)
    assert len(exported) == len(shopcast.codecs.__all__)
    for name in exported:
        assert hasattr(shopcast.codecs, name), name
    public = {name for name in vars(shopcast.codecs) if not name.startswith("_")}
    assert public == exported


def test_codecs_never_imports_the_server():
    for path in (ROOT / "codecs").glob("*.py"):
        assert "shopcast.server" not in path.read_text(), path.name


def test_media_section_matches_media_config():
    media = tomllib.loads((ROOT / "conf" / "default.toml").read_text())["media"]
    fields = {field.name: field for field in dataclasses.fields(MediaConfig)}
    assert set(media) == set(fields)
    for name, field in fields.items():
        assert media[name] == field.default, name
        assert type(media[name]) is type(field.default), name
        metadata = field.metadata
        assert metadata["unit"] and metadata["help"], name
        if "choices" in metadata:
            assert field.default in metadata["choices"], name
        else:
            assert metadata["min"] <= field.default <= metadata["max"], name
    MediaConfig(**media)


def test_media_config_refuses_inconsistent_keys():
    for bad in ({"ring_packets": 1000}, {"ring_frames": 100},
                {"target_delay_min_ms": 200.0, "target_delay_initial_ms": 100.0}):
        try:
            MediaConfig(**bad)
        except ValueError as error:
            assert "media." in str(error)
        else:
            raise AssertionError(f"{bad} was accepted")


def test_default_datagram_fits_a_1200_byte_quic_packet():
    worst_overhead_bytes = 1 + 20 + 4 + 16 + 3 + 4  # header, DCID, PN, AEAD tag, frame, session ID
    assert MediaConfig().datagram_payload_bytes + worst_overhead_bytes <= 1200


def test_every_kernel_has_flags_and_a_signature():
    warmup()
    assert _jit.FLAGS["cache"] and _jit.FLAGS["nogil"]
    names = {dispatcher.__name__ if not hasattr(dispatcher, "py_func") else dispatcher.py_func.__name__
             for dispatcher, _ in _jit._KERNELS}
    assert names == {"packetize_kernel", "reassemble_kernel", "ingest_kernel", "release_kernel", "nack_kernel"}
    for dispatcher, signature in _jit._KERNELS:
        assert signature.return_type is not None
        func = getattr(dispatcher, "py_func", dispatcher)
        assert func.__code__.co_freevars == (), "kernels must not be closures"
        assert inspect.getmodule(func).__name__.startswith("shopcast.codecs._")


def test_warmup_reports_seconds():
    seconds = warmup()
    assert isinstance(seconds, float) and seconds >= 0
