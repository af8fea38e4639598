"""The README's commands as written: every script they name exists and
accepts every long flag they pass (its own --help lists it), every shipped
model or file they name exists, research commands use the project's
environment, and the documented Open MPI variables let mpiexec start as
root."""
import contextlib
import io
import os
import re
import runpy
import shlex
import shutil
import subprocess
import sys

import pytest

from conftest import ROOT

README = os.path.join(ROOT, "README.md")
SUBCOMMANDS = {"benchmark_compress.py": ["mnist", "imagenetcrop", "folder"]}


def bash_blocks(path=README):
    text = open(path).read()
    return re.findall(r"```bash\n(.*?)```", text, flags=re.S)


def commands(path=README):
    """(script, [long flags]) of every python invocation in the bash blocks."""
    out = []
    for block in bash_blocks(path):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split("#", 1)[0]
            for part in re.split(r"&&|;", line):
                words = shlex.split(part.replace("|", "_"))
                scripts = [i for i, w in enumerate(words) if w.endswith(".py")]
                if not scripts or "-m" in words[:scripts[0]]:
                    continue
                i = scripts[0]
                flags = [w.split("=", 1)[0] for w in words[i + 1:] if w.startswith("--")]
                out.append((words[i], flags))
    return out


def help_text(script):
    """Everything the script's --help prints (and its subcommands')."""
    texts = []
    for sub in [[]] + [[s] for s in SUBCOMMANDS.get(os.path.basename(script), [])]:
        argv, buf = sys.argv, io.StringIO()
        sys.argv = [script] + sub + ["--help"]
        try:
            with contextlib.redirect_stdout(buf), pytest.raises(SystemExit) as exit_info:
                runpy.run_path(os.path.join(ROOT, script), run_name="__main__")
        finally:
            sys.argv = argv
        assert exit_info.value.code in (0, None), (script, sub)
        texts.append(buf.getvalue())
    return "\n".join(texts)


def test_readme_commands_name_real_scripts_and_flags():
    cmds = commands()
    assert len(cmds) > 15
    helps = {}
    for script, flags in cmds:
        assert os.path.isfile(os.path.join(ROOT, script)), script
        if script not in helps:
            helps[script] = help_text(script)
            assert "default: " in helps[script], script          # --help shows the defaults
        for flag in flags:
            assert re.search(re.escape(flag) + r"\b", helps[script]), (script, flag)


def test_readme_names_shipped_models_and_files_that_exist():
    text = open(README).read()
    for path in ("models/demo/", "models/mnist-nz{2,4,8}/", "samples/chelsea.png",
                 "benchmarks/README.md", "docs/design.md", "bins/"):
        assert path in text, path
    for path in ("models/demo", "models/mnist-nz2", "models/mnist-nz4", "models/mnist-nz8",
                 "samples/chelsea.png", "benchmarks/README.md", "docs/design.md", "bins/README.md"):
        assert os.path.exists(os.path.join(ROOT, path)), path
    assert "model_raw.pt" not in text and "models/mnist/" not in text and "imagenetfull" not in text


def test_research_commands_use_the_project_environment():
    """Bare `python` only after the README says to activate .venv."""
    text = open(README).read()
    activate = text.index("source .venv/bin/activate")
    for block in bash_blocks():
        start = text.index(block)
        for line in block.splitlines():
            if re.match(r"\s*(python|mpiexec|torchrun)\b", line):
                assert start > activate, line


def test_mpiexec_starts_as_root_with_the_documented_variables():
    assert shutil.which("mpiexec"), "mpiexec missing: scripts/setup.sh installs openmpi-bin"
    exports = [ln for block in bash_blocks() for ln in block.splitlines()
               if ln.startswith("export OMPI_ALLOW_RUN_AS_ROOT")]
    assert len(exports) == 1
    assigned = dict(w.split("=", 1) for w in shlex.split(exports[0].split("#")[0])[1:])
    assert assigned == {"OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1"}
    env = {k: v for k, v in os.environ.items() if not k.startswith("OMPI_")}
    env.update(assigned, OMPI_MCA_rmaps_base_oversubscribe="1")
    done = subprocess.run(["mpiexec", "-np", "2", sys.executable, "-c",
                           "import os; print('<rank%s>' % os.environ['OMPI_COMM_WORLD_RANK'])"],
                          env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert sorted(re.findall(r"<rank(\d)>", done.stdout)) == ["0", "1"]     # lines may interleave


def test_command_one_prints_the_table_the_readme_shows(tmp_path, capsys):
    """README command 1 with the shipped demo model prints, to the bit, the
    table the README shows (the codec is deterministic on every CPU it ran
    on), so a new export whose figures were not carried into the README
    fails here; the file it writes decodes to the sample's pixels."""
    import image_compress
    import image_decompress
    from utils import images
    sample = os.path.join(ROOT, "samples", "chelsea.png")
    out = str(tmp_path / "chelsea.bsw")
    assert image_compress.main([sample, "-o", out, "--no-progress"]) == 0
    printed = capsys.readouterr().out
    start = printed.index("codec ")
    end = printed.index("\n", printed.index("partial edge blocks:", start)) + 1
    text = open(README).read()
    shown = text.index("```\n", text.index("What command 1 prints")) + 4
    assert printed[start:end] == text[shown:text.index("```", shown)]
    decoded = str(tmp_path / "chelsea.png")
    assert image_decompress.main([out, "-o", decoded, "--no-progress"]) == 0
    assert (images.load_image(decoded)[0] == images.load_image(sample)[0]).all()
