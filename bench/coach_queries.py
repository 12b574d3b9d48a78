"""The database work of one coach ask, in the hub's CPU: storing the question and the streaming
answer (`coach_queries.begin_ask`), reading the prompt (`PromptBuilder.build`) and storing the
answer (`coach_queries.finish_answer`), one ask after another on a fresh database.

Reported: CPU milliseconds per ask (this process's CPU time ÷ asks), in total and per step.
The model and the network play no part; it measures what fifty asks at once cost the event
loop. The code of another commit is measured by running this file from its checkout
(`PYTHONPATH=<checkout>`): it uses only calls every version has.

    .venv/bin/python bench/coach_queries.py --postgres postgresql://postgres@127.0.0.1:5432/postgres
    .venv/bin/python bench/coach_queries.py                     # SQLite, in a temp dir
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from fanout import run_bench, write_report
from ingest import fresh_database

from channels.coach_prompt import PromptBuilder
from models import coach_queries
from models.db import Database

USERS = 50
"""Asks go round this many athletes, as the coach bench's rounds do."""


async def measure(url: str, asks: int, warmup: int) -> dict[str, Any]:
    db = Database(url)
    await db.start()
    try:
        prompts = PromptBuilder(db, "You are a coach.", 12000)
        spent = {"begin_ask": 0.0, "prompt": 0.0, "finish_answer": 0.0}
        for n in range(warmup + asks):
            user = f"athlete-{n % USERS}"
            start = time.process_time()
            question, answer, _ = await coach_queries.begin_ask(
                db, user, f"question {n}", lease=15, per_minute=1_000_000)
            asked = time.process_time()
            await prompts.build(user, question)
            prompted = time.process_time()
            await coach_queries.finish_answer(db, answer["message_id"], "done",
                                              text="an answer " * 40, deltas=40)
            finished = time.process_time()
            if n >= warmup:
                spent["begin_ask"] += asked - start
                spent["prompt"] += prompted - asked
                spent["finish_answer"] += finished - prompted
    finally:
        await db.close()
    per_ask = {step: round(1000 * seconds / asks, 3) for step, seconds in spent.items()}
    return {"asks": asks, "cpu_ms_per_ask": round(sum(per_ask.values()), 3),
            "cpu_ms_per_step": per_ask}


async def run(args: argparse.Namespace) -> dict[str, Any]:
    if args.postgres:
        async with fresh_database(args.postgres, "coach_queries") as url:
            return {"database": "postgresql", **await measure(url, args.asks, args.warmup)}
    with tempfile.TemporaryDirectory() as directory:
        url = f"sqlite:///{Path(directory) / 'bench.db'}"
        return {"database": "sqlite", **await measure(url, args.asks, args.warmup)}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--asks", type=int, default=300)
    parser.add_argument("--warmup", type=int, default=50, help="asks before measuring")
    parser.add_argument("--postgres", help="admin URL of a PostgreSQL server (a fresh database "
                        "is made and dropped); without it, SQLite")
    parser.add_argument("--json", help="write the result here")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    result = run_bench(run(args), "the bench database was dropped")
    if result is None:
        return 130
    steps = result["cpu_ms_per_step"]
    print(f"{result['database']}: {result['cpu_ms_per_ask']} ms of CPU per ask "
          f"(begin_ask {steps['begin_ask']}, prompt {steps['prompt']}, "
          f"finish_answer {steps['finish_answer']}) over {result['asks']} asks")
    if args.json:
        write_report(args.json, {"results": result})
    return 0


if __name__ == "__main__":
    sys.exit(main())
