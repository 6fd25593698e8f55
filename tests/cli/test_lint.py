"""`narcissus lint` run as a user, CI or pre-commit runs it: file walking, formats, exit codes."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import yaml

from narcissus.cli.lint import FORMATS
from tests.support import assert_one_line_error, run_cli

ROOT = Path(__file__).parent.parent.parent
SAMPLES = ROOT / "tests" / "data" / "lint"
SARIF_SCHEMA = ROOT / "tests" / "data" / "sarif" / "sarif-schema-2.1.0.json"
REQUIRED_KEYS = {"path", "line", "column", "port", "ranges", "message"}


def lint(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "narcissus", "lint", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=cwd,
    )


def sample_count() -> int:
    """How many ports at risk the samples hold (see tests/data/lint/README.md)."""
    from tests.core.test_lint import expected

    return sum(len(expected(p.read_text())) for p in SAMPLES.iterdir() if p.name != "README.md")


def test_findings_exit_1_and_json_lists_them() -> None:
    done = lint("--format", "json", str(SAMPLES))
    assert done.returncode == 1, done.stderr
    everything = json.loads(done.stdout)
    findings = [f for f in everything if f["rule"] == "ephemeral-port"]
    assert isinstance(everything, list) and len(findings) == sample_count()
    assert all(f["level"] == "warning" and f["service"] is None for f in findings)
    for finding in findings:
        assert set(finding) >= REQUIRED_KEYS
        assert finding["path"].startswith(str(SAMPLES))
        assert all(r["range"][0] <= finding["port"] <= r["range"][1] for r in finding["ranges"])
    assert lint("--json", str(SAMPLES)).stdout == done.stdout


def test_clean_files_exit_0(tmp_path: Path) -> None:
    (tmp_path / "app.yaml").write_text("port: 7032\ntimeout: 50000\n")  # no service's
    done = lint(str(tmp_path))
    assert done.returncode == 0, done.stdout
    assert "No port inside an ephemeral range in 1 file(s)" in done.stdout
    assert json.loads(lint("--format", "json", str(tmp_path)).stdout) == []


def test_a_port_of_a_well_known_service_is_a_note(tmp_path: Path) -> None:
    """The first report's fix: Redis moved onto the port of a chat client."""
    (tmp_path / "redis.conf").write_text("bind 127.0.0.1\nport 5222\n")
    done = lint("redis.conf", cwd=tmp_path)
    assert done.returncode == 0, done.stdout  # a note, not a warning
    first, fix, *_summary = done.stdout.splitlines()
    assert first == (
        "redis.conf:2:6: note: port 5222 (directive port) is registered to xmpp-client "
        "(/etc/services, IANA registry): a chat client or server may use it"
    )
    assert "narcissus port --portable" in fix
    assert "1 port(s) of well-known services" in done.stdout
    [note] = json.loads(lint("--json", "redis.conf", cwd=tmp_path).stdout)
    assert (note["rule"], note["level"], note["port"], note["ranges"]) == (
        "well-known-port",
        "note",
        5222,
        [],
    )
    assert note["service"] == {"name": "xmpp-client", "sources": ["/etc/services", "IANA registry"]}
    assert json.loads(lint("--json", "--no-services", "redis.conf", cwd=tmp_path).stdout) == []
    github = lint("--format", "github", "redis.conf", cwd=tmp_path).stdout
    assert github.startswith("::notice file=redis.conf,line=2,col=6")


def test_a_file_that_names_the_service_gets_no_note(tmp_path: Path) -> None:
    (tmp_path / "redis.conf").write_text("port 6379\n")  # Redis's own port, in its own file
    (tmp_path / "app.env").write_text("CACHE=redis://cache:6379\nWEB_PORT=8443\nSSH_PORT=22\n")
    findings = json.loads(lint("--json", str(tmp_path)).stdout)
    # 6379 is named (redis) in both files; 22 is below 1024; 8443 belongs to pcsync-https.
    assert [(f["path"].rsplit("/", 1)[-1], f["port"]) for f in findings] == [("app.env", 8443)]


def test_text_output_names_place_ranges_and_fix(tmp_path: Path) -> None:
    (tmp_path / "redis.conf").write_text("port 50000\n")
    done = lint("redis.conf", cwd=tmp_path)
    assert done.returncode == 1
    first, fix, summary = done.stdout.splitlines()
    assert first.startswith("redis.conf:1:6: port 50000 (directive port) is inside")
    assert fix.startswith("  fix: use a port below 32768")
    assert summary.startswith("1 port(s) inside an ephemeral range in 1 of 1 file(s)")


def test_os_selection(tmp_path: Path) -> None:
    (tmp_path / "a.env").write_text("PORT=20000\n")
    assert lint("--os", "linux,windows,macos", str(tmp_path)).returncode == 0
    done = lint("--os", "freebsd", "--format", "json", str(tmp_path))
    assert done.returncode == 1
    [finding] = json.loads(done.stdout)
    assert finding["ranges"] == [{"os": "freebsd", "label": "FreeBSD", "range": [10000, 65535]}]


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (("/nonexistent/narcissus",), "cannot read '/nonexistent/narcissus'"),
        (("--os", "linux,plan9", "."), "unknown OS 'plan9'"),
        (("--os", ",", "."), "--os takes a comma-separated list"),
        (("--format", "xml", "."), "invalid choice: 'xml'"),
    ],
)
def test_bad_input_gets_one_line_and_exit_2(args: tuple[str, ...], fragment: str) -> None:
    assert_one_line_error(run_cli("lint", *args), fragment)


# ---------------------------------------------------------------- SARIF and GitHub


def validate_sarif(log: object) -> None:
    schema = json.loads(SARIF_SCHEMA.read_text())
    validator = jsonschema.Draft4Validator(schema, format_checker=jsonschema.FormatChecker())
    errors = sorted(validator.iter_errors(log), key=str)
    assert not errors, "\n".join(str(e.message) for e in errors[:5])


def test_sarif_validates_against_the_official_schema(tmp_path: Path) -> None:
    shutil.copytree(SAMPLES, tmp_path / "my samples")  # a space: URIs must be encoded
    (tmp_path / "blob.bin").write_bytes(b"\x00\x01port: 50000\n")
    done = lint("--format", "sarif", ".", cwd=tmp_path)
    assert done.returncode == 1, done.stderr
    log = json.loads(done.stdout)
    validate_sarif(log)
    [run] = log["runs"]
    assert run["columnKind"] == "unicodeCodePoints"
    assert run["originalUriBaseIds"]["%SRCROOT%"]["uri"] == tmp_path.as_uri() + "/"
    warnings = [r for r in run["results"] if r["level"] == "warning"]
    assert len(warnings) == sample_count()
    notes = [r for r in run["results"] if r["level"] == "note"]
    assert notes and all(r["ruleId"] == "well-known-port" for r in notes)
    rules = run["tool"]["driver"]["rules"]
    assert all(rules[r["ruleIndex"]]["id"] == r["ruleId"] for r in run["results"])
    result = next(r for r in warnings if "redis.conf" in json.dumps(r))
    location = result["locations"][0]["physicalLocation"]
    assert location["artifactLocation"]["uri"] == "my%20samples/redis.conf"
    assert location["region"] == {"startLine": 3, "startColumn": 6, "endColumn": 11}
    assert result["ruleId"] == run["tool"]["driver"]["rules"][0]["id"]
    [note] = run["invocations"][0]["toolExecutionNotifications"]
    assert note["message"]["text"] == "skipped: binary"


def test_sarif_without_findings_is_valid_too(tmp_path: Path) -> None:
    (tmp_path / "ok.toml").write_text("port = 7032\n")
    done = lint("--format", "sarif", str(tmp_path))
    assert done.returncode == 0
    log = json.loads(done.stdout)
    validate_sarif(log)
    assert log["runs"][0]["results"] == []


def test_github_format_prints_workflow_commands(tmp_path: Path) -> None:
    (tmp_path / "a,b.env").write_text("REDIS_URL=redis://cache:50000\n")
    done = lint("--format", "github", "a,b.env", cwd=tmp_path)
    assert done.returncode == 1
    [line] = done.stdout.splitlines()
    assert line.startswith(
        "::warning file=a%2Cb.env,line=1,col=25,endColumn=30,title=narcissus%3A port 50000"
    )
    assert "::port 50000 (URL redis://cache:50000) is inside" in line


def test_files_that_fail_to_parse_are_read_pair_by_pair(tmp_path: Path) -> None:
    """Broken JSON and YAML are read line by line; a key need not start its line, and a value
    ends where its pair does (`"x:40001"` is another key's)."""
    files = {
        "open.json": '{"port": 50000\n',
        "extra.json": '{"x":1, "port": 50001}\n}}\n',
        "nested.jsonc": (
            '// "port": 40000\n{"redis": {"host": "h", "timeout": 40002, "port": 50002},\n'
            ' "x": [{"containerPort": 50003}], "ports": [50004, 6379],\n'
            ' "port": 50005, "a": "x:40001", bind: "127.0.0.1:50006",\n'
        ),
        "helm.yaml": "spec: {{ .Values.x }}\n  ports:\n  - {name: web, port: 50007}\n",
    }
    expected = []
    for name, text in files.items():
        (tmp_path / name).write_text(text)
        for number, line in enumerate(text.splitlines(), 1):
            expected += [(name, number, m.start() + 1) for m in re.finditer("50\\d{3}", line)]
    done = lint("--json", "--no-services", ".", cwd=tmp_path)
    assert done.returncode == 1, done.stderr
    found = [(f["path"], f["line"], f["column"]) for f in json.loads(done.stdout)]
    assert sorted(found) == sorted(expected)
    text = lint(".", cwd=tmp_path).stdout
    assert all(f"note: {name}: not valid" in text for name in files), text


def test_a_parse_failure_note_is_one_line_saying_where(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text("a: [\nport: 50000\n  b: {\n")
    (tmp_path / "b.json").write_text('{\n  "x": 1,\n  "port": 50001\n  "y": 2\n}\n')
    (tmp_path / "c.json").write_text('{\n  "a": "x\\q", "port": 50002}\n')
    done = lint(".", cwd=tmp_path)
    assert done.returncode == 1, done.stderr
    notes = [line for line in done.stdout.splitlines() if "not valid" in line]
    yaml_note, json_note, escape_note = notes
    assert re.fullmatch(  # PyYAML's words, on the note's one line
        r"note: a\.yaml: not valid yaml \(line 3, column 4: [^()]+\): read line by line",
        yaml_note,
    )
    assert json_note == (
        "note: b.json: not valid json (line 4, column 3: expected ',' or '}'): read line by line"
    )
    assert escape_note == (  # the place in the file, not in the string
        "note: c.json: not valid json (line 2, column 8: bad escape in a string): read line by line"
    )


# ---------------------------------------------------------------- bytes that are not UTF-8


def write_bytes(directory: Path, name: bytes, content: bytes) -> None:
    """A file whose name may not be UTF-8 (Path cannot spell it: Python decodes names)."""
    with open(os.fsencode(directory) + b"/" + name, "wb") as handle:
        handle.write(content)


@pytest.mark.parametrize("output", FORMATS)
def test_file_names_that_are_not_utf8_print_readably_in_every_format(
    tmp_path: Path, output: str
) -> None:
    write_bytes(tmp_path, b"bad\xffname.conf", b"port 50000\n")
    write_bytes(
        tmp_path, b"bad\xffrange.yml", b"services:\n  a:\n    ports: ['50000-50010:80-90']\n"
    )
    write_bytes(tmp_path, b"bad\xffbroken.json", b'{"x": }\n')  # a note names it
    write_bytes(tmp_path, b"bad\xffblob.bin", b"\x00port 50001\n")  # skipped
    done = subprocess.run(
        [sys.executable, "-m", "narcissus", "lint", "--format", output, "."],
        capture_output=True,
        timeout=60,
        check=False,
        cwd=tmp_path,
    )
    assert (done.returncode, done.stderr) == (1, b"")
    out = done.stdout.decode("utf-8")  # strict: a lone surrogate's byte would fail here
    if output in ("json", "sarif"):
        # "\udcff" in the JSON is a lone surrogate once parsed: encoding it fails here.
        out = json.dumps(json.loads(out), ensure_ascii=False)
        out.encode("utf-8")
    if output == "sarif":
        log = json.loads(out)
        validate_sarif(log)
        [run] = log["runs"]
        uris = [r["locations"][0]["physicalLocation"]["artifactLocation"]["uri"] for r in
                run["results"] + run["invocations"][0]["toolExecutionNotifications"]]  # fmt: skip
        # the URI keeps the name's real bytes
        assert sorted(uris) == [
            "bad%FFblob.bin", "bad%FFbroken.json", "bad%FFname.conf", "bad%FFrange.yml"
        ]  # fmt: skip
    else:
        assert "bad\ufffdname.conf" in out
    assert "--from 'bad\ufffdrange.yml'" in out  # the fix of a range names the file
    if output == "text":
        assert "note: bad\ufffdbroken.json: not valid json" in out
        assert "skipped: bad\ufffdblob.bin: binary" in out


def test_a_file_that_is_not_utf8_is_linted_at_the_right_columns(tmp_path: Path) -> None:
    """The report's redis.conf: a Latin-1 byte in a comment after the port (the comment, not the
    byte, hid it). Each undecodable byte reads as one U+FFFD, so a column counted in bytes is
    the column lint gives."""
    files = {
        "redis.conf": b"port 50000 # caf\xe9\ntls-port 50001 # cache\n",
        "app.env": b"# caf\xe9\nNAME=caf\xe9 WEB_PORT=50002\n",
        "config.json": b'{"caf\xe9": "\xe9\xe9", "port": 50003}\n',
        "config.toml": b'caf\xe9 = 1\nx = { name = "caf\xe9", port = 50004 }\n',
    }
    expected = []
    for name, content in files.items():
        write_bytes(tmp_path, name.encode(), content)
        for number, line in enumerate(content.splitlines(), 1):
            at = line.find(b"500")
            if at >= 0:
                expected.append((name, number, at + 1, int(line[at : at + 5])))
    done = lint("--json", ".", cwd=tmp_path)
    assert done.returncode == 1, done.stderr
    found = [(f["path"], f["line"], f["column"], f["port"]) for f in json.loads(done.stdout)]
    assert sorted(found) == sorted(expected)
    assert "note:" not in lint(".", cwd=tmp_path).stdout


# ---------------------------------------------------------------- walking the tree


def test_walk_skips_what_it_must_and_never_hangs(tmp_path: Path) -> None:
    tree = tmp_path / "repo"
    (tree / "conf").mkdir(parents=True)
    (tree / "conf" / "app.env").write_text("PORT=50000\n")
    (tree / "conf" / "loop").symlink_to("..")  # a directory loop
    (tree / "self").symlink_to("self")  # a symlink to itself
    (tree / "dangling").symlink_to("nowhere")
    (tree / "blob.bin").write_bytes(b"PK\x00\x00 PORT=50001\n")
    (tree / "huge.env").write_text("PORT=50002\n" + "#" * (3 * 1024 * 1024))
    os.mkfifo(tree / "pipe.env")  # reading it would block
    for hidden in (".git", "node_modules", ".venv"):
        (tree / hidden).mkdir()
        (tree / hidden / "x.env").write_text("PORT=50003\n")
    outside = tmp_path / "shared"
    outside.mkdir()
    (outside / "db.env").write_text("DB_PORT=50004\n")
    (tree / "shared").symlink_to(outside)  # a symlinked directory is followed

    done = lint("--format", "json", str(tree))
    assert done.returncode == 1, done.stderr
    found = sorted(
        (Path(f["path"]).relative_to(tree).as_posix(), f["port"]) for f in json.loads(done.stdout)
    )
    assert found == [("conf/app.env", 50000), ("shared/db.env", 50004)]

    text = lint(str(tree)).stdout
    for reason in (
        "conf/loop: symlink loop back to",
        "self: symlink loop",
        "dangling: broken symlink",
        "blob.bin: binary",
        "huge.env: too large (3.0 MiB > 2 MiB)",
    ):
        assert reason in text, (reason, text)


def test_explicit_files_are_read_even_in_skipped_directories(tmp_path: Path) -> None:
    (tmp_path / ".git").mkdir()
    (tmp_path / ".git" / "hooks.env").write_text("PORT=50000\n")
    assert lint(str(tmp_path)).returncode == 0
    assert lint(str(tmp_path / ".git" / "hooks.env")).returncode == 1


def test_exclude(tmp_path: Path) -> None:
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "fixture.env").write_text("PORT=50000\n")
    (tmp_path / "app.env").write_text("PORT=50001\n")
    done = lint("--exclude", "*/tests", "--exclude", "*.bak", "--json", str(tmp_path))
    assert [f["port"] for f in json.loads(done.stdout)] == [50001]


def test_nothing_read_is_executed(tmp_path: Path) -> None:
    marker = tmp_path / "executed"
    (tmp_path / "evil.py").write_text(f"open({str(marker)!r}, 'w').close()\nPORT = 50000\n")
    (tmp_path / "evil.yaml").write_text(
        f"run: !!python/object/apply:os.system ['touch {marker}']\nport: 50001\n"
    )
    (tmp_path / "evil.sh").write_text(f"#!/bin/sh\ntouch {marker}\n--port 50002\n")
    (tmp_path / "evil.sh").chmod(0o755)
    done = lint("--json", str(tmp_path))
    assert sorted(f["port"] for f in json.loads(done.stdout)) == [50000, 50001, 50002]
    assert not marker.exists()


def test_without_pyyaml_yaml_is_read_line_by_line(tmp_path: Path) -> None:
    (tmp_path / "docker-compose.yml").write_text("services:\n  db:\n    ports: ['50000:5432']\n")
    code = (
        "import sys; sys.modules['yaml'] = None; sys.argv = ['narcissus', 'lint', sys.argv[1]]; "
        "from narcissus.cli import main; sys.exit(main())"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 1, done.stderr
    assert "PyYAML is not installed (NARCISSUS_EXTRAS=lint ./scripts/install" in done.stdout
    assert "docker-compose.yml:3:14: port 50000" in done.stdout  # the 5 is the 14th char


# ---------------------------------------------------------------- pre-commit


def test_pre_commit_hook_runs_lint_on_the_files_it_is_given(tmp_path: Path) -> None:
    [hook] = yaml.safe_load((ROOT / ".pre-commit-hooks.yaml").read_text())
    assert hook["id"] == "narcissus-lint"
    assert hook["language"] == "python"
    assert any(dep.lower().startswith("pyyaml") for dep in hook["additional_dependencies"])
    entry = hook["entry"].split()
    assert entry[0] == "narcissus"
    (tmp_path / "a.env").write_text("PORT=50000\n")
    (tmp_path / "b.env").write_text("PORT=6379\n")
    script = shutil.which("narcissus", path=str(Path(sys.executable).parent))
    assert script is not None
    command = [script, *entry[1:]]
    done = subprocess.run(
        [*command, "a.env", "b.env"], capture_output=True, text=True, cwd=tmp_path, check=False
    )
    assert done.returncode == 1 and "a.env:1:6: port 50000" in done.stdout
    clean = subprocess.run(
        [*command, "b.env"], capture_output=True, text=True, cwd=tmp_path, check=False
    )
    assert clean.returncode == 0
