"""The command line as a new user meets it: nothing a user has is lost, streams answer as lines arrive,
bad input is one clear line, long runs show progress on a terminal only."""

import io
import os
import selectors
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file, save_file

from zhen.checkpoint import CheckpointError, load_model_dir
from zhen.cli import main

ROOT = Path(__file__).resolve().parents[1]


def zhen(*args: str, stdin: bytes | None = None, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "zhen", *args], input=stdin, capture_output=True, cwd=ROOT,
                          **kwargs)


def one_error_line(stderr: bytes | str) -> str:
    text = stderr.decode() if isinstance(stderr, bytes) else stderr
    assert "Traceback" not in text, text
    lines = text.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("zhen: error: "), text
    return lines[0]


# ----------------------------------------------------------------------------- nothing a user has is lost


def test_missing_input_leaves_an_existing_output_untouched(tiny_model_dir, tmp_path, capsys):
    output = tmp_path / "existing.en"
    output.write_text("keep me\n", encoding="utf-8")
    code = main(["translate", "--model", str(tiny_model_dir), "-i", str(tmp_path / "missing.zh"), "-o", str(output)])
    assert code == 2 and "input file not found" in one_error_line(capsys.readouterr().err)
    assert output.read_text(encoding="utf-8") == "keep me\n"


def test_output_that_is_the_input_is_refused(tiny_model_dir, tmp_path, capsys):
    same = tmp_path / "same.txt"
    same.write_text("我爱你\n你好\n", encoding="utf-8")
    assert main(["translate", "--model", str(tiny_model_dir), "-i", str(same), "-o", str(same)]) == 2
    assert "is the input file" in one_error_line(capsys.readouterr().err)
    assert same.read_text(encoding="utf-8") == "我爱你\n你好\n"
    link = tmp_path / "link.txt"
    link.symlink_to(same)  # another name for the same file
    assert main(["evaluate", "--model", str(tiny_model_dir), "--src", str(same), "--ref", str(same),
                 "-o", str(link)]) == 2
    assert "is the input file" in one_error_line(capsys.readouterr().err)
    assert same.read_text(encoding="utf-8") == "我爱你\n你好\n"


def test_bad_utf8_late_in_a_file_leaves_no_half_written_output(tiny_model_dir, tmp_path, capsys):
    source, output = tmp_path / "in.zh", tmp_path / "out.en"
    source.write_bytes("你好\n".encode() * 299 + "我爱你\n".encode("gbk") + "你好\n".encode())
    output.write_text("previous translations\n", encoding="utf-8")
    assert main(["translate", "--model", str(tiny_model_dir), "-i", str(source), "-o", str(output)]) == 2
    assert "in.zh, line 300: not valid UTF-8" in one_error_line(capsys.readouterr().err)
    assert output.read_text(encoding="utf-8") == "previous translations\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.zh", "out.en"]  # no temporary file left
    fresh = tmp_path / "fresh.en"
    assert main(["translate", "--model", str(tiny_model_dir), "-i", str(source), "-o", str(fresh)]) == 2
    assert not fresh.exists()
    capsys.readouterr()


# ----------------------------------------------------------------------------- standard input


def test_invalid_utf8_on_standard_input_names_its_line(tiny_model_dir, tmp_path):
    data = "你好\n".encode() + "我爱你\n".encode("gbk") + "你好\n".encode()
    piped = zhen("translate", "--model", str(tiny_model_dir), stdin=data)  # a pipe
    assert piped.returncode == 2
    assert "standard input, line 2: not valid UTF-8" in one_error_line(piped.stderr)
    assert len(piped.stdout.decode().splitlines()) <= 1  # at most the good line before it
    redirected = tmp_path / "in.zh"
    redirected.write_bytes(data)
    with redirected.open("rb") as handle:  # `zhen translate < in.zh`: a file, read in large batches
        result = subprocess.run([sys.executable, "-m", "zhen", "translate", "--model", str(tiny_model_dir)],
                                stdin=handle, capture_output=True, cwd=ROOT)
    assert result.returncode == 2 and "standard input, line 2: not valid UTF-8" in one_error_line(result.stderr)


def read_line_within(process: subprocess.Popen, seconds: float) -> bytes:
    selector = selectors.DefaultSelector()
    selector.register(process.stdout, selectors.EVENT_READ)
    deadline = time.monotonic() + seconds
    line = b""
    while not line.endswith(b"\n") and time.monotonic() < deadline:
        if selector.select(timeout=deadline - time.monotonic()):
            chunk = os.read(process.stdout.fileno(), 1)
            if not chunk:
                break
            line += chunk
    return line


def test_a_pipe_gets_each_answer_before_the_next_line_is_sent(tiny_model_dir):
    process = subprocess.Popen([sys.executable, "-m", "zhen", "translate", "--model", str(tiny_model_dir)],
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT)
    try:
        process.stdin.write("我爱你\n".encode())
        process.stdin.flush()
        first = read_line_within(process, 60)  # the input stays open: an answer now means no waiting for EOF
        assert first.endswith(b"\n"), process.stderr.read1() if process.poll() is not None else first
        rest, err = process.communicate("你好\n".encode(), timeout=60)
    finally:
        process.kill()
    assert process.returncode == 0, err
    assert len(rest.decode().splitlines()) == 1


# ----------------------------------------------------------------------------- arguments and messages


def test_nbest_and_beam_are_checked_in_the_user_s_own_words(tiny_model_dir, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["translate", "--model", str(tiny_model_dir), "--nbest", "0", "我爱你"])
    assert exit_info.value.code == 2 and "--nbest: must be at least 1" in capsys.readouterr().err
    assert main(["translate", "--model", str(tiny_model_dir), "--nbest", "3", "--beam", "2", "我爱你"]) == 2
    message = one_error_line(capsys.readouterr().err)
    assert "--nbest 3" in message and "--beam 2" in message and "decode." not in message


def test_evaluate_on_an_empty_set_is_a_clear_error(tiny_model_dir, tmp_path):
    empty_zh, empty_en = tmp_path / "empty.zh", tmp_path / "empty.en"
    empty_zh.write_bytes(b"")
    empty_en.write_bytes(b"")
    result = zhen("evaluate", "--model", str(tiny_model_dir), "--src", str(empty_zh), "--ref", str(empty_en))
    assert result.returncode == 2 and "no sentences to evaluate" in one_error_line(result.stderr)


def test_explain_says_where_its_files_went(tiny_model_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["explain", "我爱你", "--model", str(tiny_model_dir), "--html", "--layer", "1"]) == 0
    out = capsys.readouterr().out
    where = tmp_path / "explain-out"
    assert f"to {where}" in out and (where / "walkthrough.html").is_file()
    assert str(Path("explain-out") / "walkthrough.html") in out


def test_non_finite_weights_are_refused_on_load(tiny_model_dir, tmp_path):
    import shutil

    broken = tmp_path / "nan-model"
    shutil.copytree(tiny_model_dir, broken)
    weights = load_file(broken / "model.safetensors")
    name = sorted(weights)[3]
    weights[name] = weights[name].clone()
    weights[name].view(-1)[0] = float("nan")
    save_file(weights, broken / "model.safetensors")
    with pytest.raises(CheckpointError, match=f"NaN or infinite values \\(in {name}"):
        load_model_dir(broken)
    result = zhen("translate", "--model", str(broken), "我爱你")
    assert result.returncode == 2 and "NaN or infinite" in one_error_line(result.stderr)


def test_the_licence_pyproject_names_is_there():
    import tomllib

    licence = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]["license"]
    text = (ROOT / "LICENSE").read_text(encoding="utf-8")
    assert licence == "MIT" and text.startswith("MIT License") and "Permission is hereby granted" in text


# ----------------------------------------------------------------------------- progress


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_shows_on_a_terminal_only(tiny_model_dir, tmp_path, monkeypatch, capsys):
    source = tmp_path / "in.zh"
    source.write_text("我爱你\n你好\n" * 20, encoding="utf-8")
    args = ["translate", "--model", str(tiny_model_dir), "-i", str(source), "-o", str(tmp_path / "out.en")]
    assert main(args) == 0
    assert capsys.readouterr() == ("", "")  # not a terminal: quiet
    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    assert main(args) == 0
    assert "40/40" in terminal.getvalue() and "sent/s" in terminal.getvalue()
    assert capsys.readouterr().out == ""  # nothing extra on standard output
    terminal.truncate(0)
    ref = tmp_path / "ref.en"
    ref.write_text("I love you.\nHello.\n" * 20, encoding="utf-8")
    assert main(["evaluate", "--model", str(tiny_model_dir), "--src", str(source), "--ref", str(ref)]) == 0
    assert "evaluate" in terminal.getvalue() and "40/40" in terminal.getvalue()
    assert "BLEU" in capsys.readouterr().out


def test_translator_reports_progress_in_pieces(tiny_model_dir):
    from zhen import Translator

    translator = Translator.load(tiny_model_dir, device="cpu", batch_tokens=16)
    calls: list[tuple[int, int]] = []
    sentences = ["我爱你", "", "今天天气很好。", "你好"]
    translator.translate(sentences, progress=lambda done, total: calls.append((done, total)))
    assert calls[-1] == (3, 3) and len(calls) > 1  # three non-empty pieces, several batches
    assert [done for done, _ in calls] == sorted(done for done, _ in calls)


def test_a_reader_that_leaves_early_is_not_an_error(tiny_model_dir):
    """`zhen explain … | head -1`: the pipe closes under zhen's feet; exit quietly, status 0."""
    command = f"{sys.executable} -m zhen explain 我爱你 --model {tiny_model_dir} | head -1"
    result = subprocess.run(["bash", "-o", "pipefail", "-c", command], capture_output=True, cwd=ROOT)
    assert result.returncode == 0 and result.stderr == b"", result.stderr
    assert len(result.stdout.splitlines()) == 1


def test_serve_refuses_a_thread_count_below_one(capsys):
    assert main(["serve", "--threads", "0", "--port", "0"]) == 2
    assert "--threads must be at least 1" in one_error_line(capsys.readouterr().err)


def test_an_atomic_directory_appears_whole_or_not_at_all(tmp_path):
    from zhen.textio import atomic_directory

    target = tmp_path / "model"
    with pytest.raises(RuntimeError), atomic_directory(target) as tmp:
        (tmp / "half.bin").write_bytes(b"x")
        raise RuntimeError("interrupted while writing")
    assert list(tmp_path.iterdir()) == []  # neither the directory nor its temporary
    with atomic_directory(target) as tmp:
        (tmp / "whole.bin").write_bytes(b"x")
    assert [p.name for p in tmp_path.iterdir()] == ["model"] and (target / "whole.bin").is_file()
    with pytest.raises(FileExistsError, match="already exists"), atomic_directory(target):
        pass
