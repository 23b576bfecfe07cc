"""Print a pyproject.toml's dependencies, one a line, for the image's cached install
layers (deploy/Dockerfile): those of the packages named
(``python dependencies.py pyproject.toml torch torchvision``) or, with ``--except``, all
but those. Standard library only: it runs on the base image's Python before anything
is installed."""

import re
import sys
import tomllib


def name(requirement: str) -> str:
    return re.match(r"[A-Za-z0-9._-]+", requirement)[0].lower()


def main(argv: list[str]) -> None:
    path, *names = argv
    with open(path, "rb") as f:
        deps = tomllib.load(f)["project"]["dependencies"]
    if names[:1] == ["--except"]:
        print("\n".join(d for d in deps if name(d) not in set(names[1:])))
        return
    chosen = [d for d in deps if name(d) in set(names)]
    missing = set(names) - {name(d) for d in chosen}
    if missing:
        sys.exit(f"not in {path}'s dependencies: {sorted(missing)}")
    print("\n".join(chosen))


if __name__ == "__main__":
    main(sys.argv[1:])
