"""The paper's experiments in miniature on the head world (evaluation/experiments.py) -> docs/EXPERIMENTS.md.

    python scripts/experiments.py run                 # the committed run (~90 min on 2 cores; resumable)
    python scripts/experiments.py run --smoke --work /tmp/x --docs /tmp/x/docs   # the CI smoke run (~1 min)
    python scripts/experiments.py report              # rewrite the doc from WORK/results (no training)
    python scripts/experiments.py symmetry            # the one-sided symmetry experiment -> docs/SYMMETRY.md
                                                      #   (start it once per core: the workers share the work)
    python scripts/experiments.py symmetry-report     # rewrite docs/SYMMETRY.md from WORK (no training;
                                                      #   renders the diagnostics of sets that lack them)

Every person's results are cached in WORK/results/person_SEED.json as soon as they finish, so an interrupted run
resumes where it stopped. The doc's discussion comes from docs/experiments/notes.md when it exists (written by a
person after reading the numbers; the tables and figures are always regenerated).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def _machine() -> str:
    import os
    return f"{platform.machine()} Linux, {os.cpu_count()} cores ({platform.processor() or 'cpu'})"


def _load_results(work: Path, cfg) -> dict:
    people = []
    for seed in cfg.person_seeds():
        path = work / "results" / f"person_{seed}.json"
        if path.is_file():
            people.append(json.loads(path.read_text()))
    if not people:
        raise FileNotFoundError(f"{work / 'results'}: no person results yet (run first)")
    threads = sorted({str(p.get("torch_threads", "?")) for p in people})
    return {"config": cfg.to_dict(), "people": people, "seconds": sum(p["seconds"] for p in people),
            "torch_threads": "/".join(threads)}


def write_docs(result: dict, docs: Path, command: str) -> Path:
    from evaluation.experiments_report import figures, render, summarize
    from formats.atomic import write_text
    folder = docs / "experiments"
    folder.mkdir(parents=True, exist_ok=True)
    write_text(folder / "results.json", json.dumps(result) + "\n")
    paths = figures(summarize(result), folder)
    notes_file = folder / "notes.md"
    notes = notes_file.read_text() if notes_file.is_file() else ""
    return write_text(docs / "EXPERIMENTS.md", render(result, command, _machine(), paths, notes))


def symmetry(args, command: str) -> None:
    """The one-sided vs balanced symmetry experiment (evaluation/symmetry_experiment.py)."""
    from evaluation import symmetry_diagnostics as sd
    from evaluation import symmetry_experiment as sx
    from evaluation.symmetry_report import render
    from formats.atomic import write_text
    from generator.model_dir import load_model_dir
    from perception.heads_identity import load_heads_identity
    cfg = sx.SymmetryConfig(**sx.SMOKE) if args.smoke else sx.SymmetryConfig()
    if args.people is not None:
        cfg = dataclasses.replace(cfg, people=args.people)
    cfg.validate()
    work = args.work if args.work != DEFAULT_WORK else REPO / "runs" / "symmetry"
    G, identity, log = load_model_dir(args.model), load_heads_identity(), (lambda m: print(m, flush=True))
    if args.command == "symmetry":
        result = sx.run(G, work, cfg, identity=identity, log=log)
    else:
        result = sx.collect(work, cfg)
    if not result["people"]:
        raise SystemExit(f"{work / 'results'}: no person has finished yet")
    diagnostics = sd.diagnose(G, work, cfg, identity, log)
    folder = args.docs / "experiments"
    folder.mkdir(parents=True, exist_ok=True)
    write_text(folder / "symmetry.json", json.dumps(dict(result, diagnostics=diagnostics)) + "\n")
    notes_file = folder / "symmetry_notes.md"
    notes = notes_file.read_text() if notes_file.is_file() else ""
    print(write_text(args.docs / "SYMMETRY.md", render(result, command, _machine(), notes,
                                                          sd.summarize(diagnostics))))


DEFAULT_WORK = REPO / "runs" / "experiments"


def main(argv: list[str] | None = None) -> None:
    from evaluation.experiments import SMOKE, ExperimentConfig
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=("run", "report", "symmetry", "symmetry-report"))
    parser.add_argument("--model", type=Path, default=REPO / "models" / "heads")
    parser.add_argument("--work", type=Path, default=DEFAULT_WORK,
                        help="work folder (default runs/experiments; runs/symmetry for the symmetry commands)")
    parser.add_argument("--docs", type=Path, default=REPO / "docs")
    parser.add_argument("--smoke", action="store_true", help="the CI smoke configuration (pipeline check only)")
    parser.add_argument("--people", type=int, help="override the number of people")
    parser.add_argument("--threads", type=int, default=2, choices=range(1, 257), metavar="1..256")
    args = parser.parse_args(argv)
    if args.people is not None and not 1 <= args.people <= 100:
        parser.error(f"--people {args.people}: must be in 1..100")
    import torch
    torch.set_num_threads(args.threads)
    if args.command.startswith("symmetry"):
        return symmetry(args, "python scripts/experiments.py symmetry" + (" --smoke" if args.smoke else "") +
                        (f" --people {args.people}" if args.people is not None else ""))
    cfg = ExperimentConfig(**SMOKE) if args.smoke else ExperimentConfig()
    if args.people is not None:
        cfg = dataclasses.replace(cfg, people=args.people, size_people=min(cfg.size_people, args.people))
    cfg.validate()
    command = "python scripts/experiments.py run" + (" --smoke" if args.smoke else "") + \
        (f" --people {args.people}" if args.people is not None else "") + \
        (f" --threads {args.threads}" if args.threads != 2 else "")
    if args.command == "run":
        from evaluation.experiments import run_experiment
        from generator.model_dir import load_model_dir
        G = load_model_dir(args.model)
        result = run_experiment(G, args.work, cfg, log=lambda m: print(m, flush=True))
        result["model"] = str(args.model.relative_to(REPO) if args.model.is_relative_to(REPO) else args.model)
    else:
        result = _load_results(args.work, cfg)
    print(write_docs(result, args.docs, command))


if __name__ == "__main__":
    main()
