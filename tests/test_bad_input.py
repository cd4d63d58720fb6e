"""Every bad input found by the adversarial review (issue 11, items 5-9) is one clear line naming
its cause and a non-zero exit — never a traceback, a silent default or a long wait."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from e2llm_lite import cli
from e2llm_lite.costmodel import validate_profile
from e2llm_lite.devices import preset
from e2llm_lite.errors import ConfigError

REFERENCE_PROFILE = Path(__file__).resolve().parents[1] / "data" / "profile_reference.json"


def one_line(capsys, code: int, argv: list[str], *names: str) -> str:
    """Run the CLI in-process; assert exit ``code``, one stderr line naming each of ``names``."""
    with pytest.raises(SystemExit) as exc:
        sys.exit(cli.main(argv))
    assert exc.value.code == code
    err = capsys.readouterr().err.strip().splitlines()
    err = [line for line in err if not line.startswith(("waiting up to", "e2llm-lite worker"))]
    assert len(err) == 1 and err[0].startswith("e2llm-lite: error:"), err
    assert "Traceback" not in err[0]
    for name in names:
        assert name in err[0], (name, err[0])
    return err[0]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("bad")
    (d / "binary.dat").write_bytes(b"\x00\xff\xfe\x89PNG\r\n")
    (d / "one_instant.csv").write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n1,10,10\n1,20,20\n"
                                       "1,30,5\n")
    assert cli.main(["plan", "--cluster", "home4", "--rate", "1", "--strategy", "pipeline",
                     "--out", str(d / "plan.json"), "--json"]) == 0
    plan = json.loads((d / "plan.json").read_text())
    plan["replicas"][0]["batch"] = 0
    (d / "batch0.json").write_text(json.dumps(plan))
    for name, speed in (("fast", 1e300), ("slow", 1e-9)):
        c = preset("home4").to_dict()
        c["devices"][0]["prefill_speed"] = speed
        (d / f"{name}.json").write_text(json.dumps(c))
    return d


# ---- item 5 and 8: the worker's environment ------------------------------------------------------
@pytest.mark.parametrize("env,names", [
    ({"RANK": "1", "WORLD_SIZE": "3", "MASTER_PORT": "99999"}, ["MASTER_PORT", "99999"]),
    ({"RANK": "1", "WORLD_SIZE": "3", "MASTER_PORT": "abc"}, ["MASTER_PORT", "abc"]),
    ({"RANK": "abc", "WORLD_SIZE": "3"}, ["RANK", "abc"]),
    ({"RANK": "5", "WORLD_SIZE": "3"}, ["RANK", "5"]),
    ({"WORLD_SIZE": "3"}, ["RANK"]),
    ({"RANK": "1", "WORLD_SIZE": "3", "MASTER_ADDR": "no-such-host.invalid"},
     ["MASTER_ADDR", "no-such-host.invalid"]),
], ids=["port-99999", "port-abc", "rank-abc", "rank-out-of-range", "rank-missing", "addr-unresolvable"])
def test_worker_environment(env, names, monkeypatch, capsys):
    for k in ("RANK", "WORLD_SIZE", "MASTER_PORT", "MASTER_ADDR"):
        monkeypatch.delenv(k, raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    one_line(capsys, 2, ["worker"], *names)


def test_a_worker_without_a_driver_gives_up_after_its_connect_timeout(free_port):
    """Item 6: no driver listening -> one line naming the address, exit 3, within the timeout."""
    env = dict(os.environ, RANK="1", WORLD_SIZE="3", MASTER_PORT=str(free_port))
    t0 = time.monotonic()
    r = subprocess.run([sys.executable, "-m", "e2llm_lite.cli", "worker", "--connect-timeout", "2"],
                       env=env, capture_output=True, text=True, timeout=60)
    took = time.monotonic() - t0
    err = r.stderr.strip().splitlines()
    assert r.returncode == 3, r.stderr
    assert len(err) == 2 and f"127.0.0.1:{free_port}" in err[-1] and "within 2 s" in err[-1], err
    assert "Traceback" not in r.stderr and took < 30


def test_external_driver_without_workers_says_what_it_waited_for(free_port, monkeypatch, capsys):
    """Item 5: --external with no workers: a line up front, one error line after the timeout."""
    monkeypatch.setenv("MASTER_PORT", str(free_port))
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    t0 = time.monotonic()
    with pytest.raises(SystemExit) as exc:
        sys.exit(cli.main(["generate", "--prompt", "hi", "--devices", "2", "--external",
                           "--connect-timeout", "2"]))
    assert exc.value.code == 2 and time.monotonic() - t0 < 20
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and err[0].startswith("waiting up to 2 s for 2 workers"), err
    assert err[1].startswith("e2llm-lite: error:") and f"127.0.0.1:{free_port}" in err[1], err
    import gc

    import psutil

    gc.collect()
    still = [c.laddr for c in psutil.Process().net_connections(kind="inet")
             if c.status == psutil.CONN_LISTEN and c.laddr.port == free_port]
    assert not still, f"the failed rendezvous still listens on {still}"


@pytest.fixture
def free_port():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---- item 7: silently accepted ---------------------------------------------------------------
def test_rate_zero_is_refused_not_ignored(files, capsys):
    one_line(capsys, 2, ["plan", "--cluster", "home4", "--check", str(files / "plan.json"),
                         "--rate", "0"], "--rate", "0")


@pytest.mark.parametrize("rate", [[], ["--rate", "2"]], ids=["no-rate", "rate-2"])
def test_a_trace_at_one_instant_has_no_rate_either_way(files, rate, capsys):
    one_line(capsys, 2, ["plan", "--cluster", "home4", "--workload",
                         str(files / "one_instant.csv"), *rate], "one_instant.csv", "one instant")


def test_an_implausible_profile_is_refused_at_load(tmp_path, capsys):
    d = json.loads(REFERENCE_PROFILE.read_text())
    d["fit"]["prefill_layer"]["coef"][2] = 1e308
    (tmp_path / "p.json").write_text(json.dumps(d))
    one_line(capsys, 2, ["profile", "--show", str(tmp_path / "p.json")], "p.json", "prefill_layer")
    one_line(capsys, 2, ["plan", "--cluster", "home4", "--rate", "1", "--profile",
                         str(tmp_path / "p.json")], "p.json", "prefill_layer")


def test_a_noisy_tiny_profile_is_plausible_but_a_typo_is_not():
    """The plausibility bound is taken at shapes a run can ask for (CI found a tiny profile whose
    noisy batch*context slope, 0.07 ms, was refused at a batch of 8192 sequences of 8192 tokens)."""
    d = json.loads(REFERENCE_PROFILE.read_text())
    d["fit"]["decode_layer"]["coef"] = [2.28665, 0.253529, 0.0695579, 0.519468, 0.0]
    validate_profile(d)
    d["fit"]["decode_layer"]["coef"][2] = 2.0  # 2 ms per context token: > 1 h at 256 x 8192
    with pytest.raises(ConfigError, match=r"decode_layer.*batch=256, context=8192"):
        validate_profile(d)


@pytest.mark.parametrize("name,value", [("fast", "1e+300"), ("slow", "1e-09")])
def test_implausible_device_speeds_are_refused_before_spawning(files, name, value, capsys):
    t0 = time.monotonic()
    one_line(capsys, 2, ["generate", "--prompt", "hi", "--cluster", str(files / f"{name}.json")],
             f"{name}.json", "prefill_speed", value)
    assert time.monotonic() - t0 < 5


# ---- item 8: messages that name their cause ----------------------------------------------------
def test_binary_files_are_named(files, capsys):
    one_line(capsys, 2, ["plan", "--cluster", str(files / "binary.dat"), "--rate", "1"],
             "binary.dat", "UTF-8")
    one_line(capsys, 2, ["plan", "--cluster", "home4", "--workload", str(files / "binary.dat")],
             "binary.dat", "UTF-8")


def test_arguments_name_themselves(files, capsys):
    one_line(capsys, 2, ["plan", "--cluster", "home4", "--rate", "1", "--seed", "-1"], "--seed")
    one_line(capsys, 2, ["plan", "--cluster", "home4", "--check", str(files / "batch0.json")],
             "batch0.json", "batch")
    one_line(capsys, 2, ["plan", "--cluster", "home5", "--rate", "1"], "home5", "home4", "mixed8")


@pytest.mark.parametrize("argv,names", [
    (["--max-new-tokens", "0"], ["--max-new-tokens"]),
    (["--prompt", "word " * 9000], ["context"]),
], ids=["no-new-tokens", "prompt-too-long"])
def test_generation_lengths_are_checked_before_any_worker_starts(argv, names, capsys):
    t0 = time.monotonic()
    one_line(capsys, 2, ["generate", "--prompt", "hi", "--devices", "2", *argv], *names)
    assert time.monotonic() - t0 < 5   # no worker spawned (they take ~10 s to load)


# ---- item 9: the wire ----------------------------------------------------------------------------
def header(op=3, src=0, dtype=0, shape=()):
    from e2llm_lite.runtime.protocol import HEADER_LEN

    h = [op, src, 0, 0, 0, 0, 0, 0, 0, dtype, len(shape), *shape]   # op src request a-e t
    return h + [0] * (HEADER_LEN - len(h))


@pytest.mark.parametrize("h,words", [
    (header(op=99), "unknown op 99"),
    (header(src=7), "sender rank 7"),
    (header(dtype=9, shape=(2,)), "dtype code 9"),
    (header(dtype=2, shape=(-1, 4)), "negative"),
    (header(dtype=2, shape=(2**20, 2**20)), "more than"),
    (header(dtype=2, shape=(2**40, 2**40, 2**40)), "more than"),
], ids=["op", "sender", "dtype", "negative-shape", "huge", "overflowing"])
def test_a_malformed_header_is_refused_before_allocation(h, words):
    from e2llm_lite.runtime.protocol import BadMessage, check_header

    with pytest.raises(BadMessage, match=words):
        check_header(h, world=3)


def test_a_good_header_passes():
    import torch

    from e2llm_lite.runtime.protocol import Op, check_header

    assert check_header(header(dtype=2, shape=(1, 5, 576)), world=3) == (Op.FWD, torch.float32,
                                                                          [1, 5, 576])


@pytest.mark.parametrize("h,words", [(header(op=99), "unknown op 99"),
                                     (header(dtype=2, shape=(2**20, 2**20)), "more than")],
                         ids=["unknown-op", "huge-payload"])
def test_a_worker_refuses_a_malformed_message_and_stops(h, words):
    """A real worker sent a bad header reports it to the driver and exits (the stream cannot be
    trusted after it); it allocates nothing and the driver is told at once."""
    import torch

    from e2llm_lite.devices import default_cluster
    from e2llm_lite.runtime.driver import EmulatedCluster
    from e2llm_lite.runtime.protocol import TAG, Op

    with EmulatedCluster(default_cluster(1)) as rt:
        pg, dst = rt.mesh.route(1)   # the driver's pair with the worker of rank 1
        pg.send([torch.tensor(h, dtype=torch.int64)], dst, TAG).wait()
        msg = rt.dispatch.unrouted.get(timeout=20)
        assert msg.op == Op.ERROR and words in msg.text, msg.text
        rt.procs[0].wait(timeout=10)
        assert rt.procs[0].returncode == 0
