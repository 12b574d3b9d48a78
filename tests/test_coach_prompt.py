"""What the coach model is asked: the configured system prompt, the athlete's workout from the
database, the recent conversation, and the question, within the character budget."""

from __future__ import annotations

from pathlib import Path

from channels.coach_prompt import PromptBuilder, system_prompt_of
from hub.config import Settings
from models import queries
from models.db import Database
from tests.app_helpers import a_set, hr, rpc, start_session, subscribe
from tests.coach_helpers import CoachHub, until_terminal
from tests.conftest import ConnectClient
from tests.llm_server import Behaviour, LLMServer


async def test_the_prompt_carries_the_workout_and_the_recent_conversation(
        coach_hub: CoachHub, llm: LLMServer, connect: ConnectClient) -> None:
    hub = await coach_hub(coach_system_prompt="You are Coach Kim.")
    llm.default = Behaviour(text="Nice squats.")
    ann, _ = await connect("ann", target=hub)
    _, events = await subscribe(ann, "coach:ann")
    session_id = await start_session(ann, "Leg day")
    await ann.publish(f"session:{session_id}", a_set("s1", reps=5, weight_kg=100, rpe=8))
    await ann.publish(f"session:{session_id}", a_set("s2", reps=8, weight_kg=90))
    await ann.publish(f"session:{session_id}", hr("h1", 120, 140))

    first = await rpc(ann, "coach.ask", {"text": "How am I doing?"})
    await until_terminal(events, first["reply_id"])
    messages = llm.requests[0].messages
    assert messages[0] == {"role": "system", "content": "You are Coach Kim."}
    context = messages[1]["content"]
    assert messages[1]["role"] == "system"
    for fact in ('current workout "Leg day"', "2 sets", "13 reps", "1220 kg volume",
                 "avg 130 / max 140 bpm", "- squat: 5 reps x 100 kg, RPE 8",
                 "- squat: 8 reps x 90 kg"):
        assert fact in context, (fact, context)
    assert messages[2:] == [{"role": "user", "content": "How am I doing?"}]

    second = await rpc(ann, "coach.ask", {"text": "And tomorrow?"})
    await until_terminal(events, second["reply_id"])
    assert llm.requests[1].messages[2:] == [
        {"role": "user", "content": "How am I doing?"},
        {"role": "assistant", "content": "Nice squats."},
        {"role": "user", "content": "And tomorrow?"}]
    assert llm.requests[1].body["model"] == hub.settings.coach_model
    assert llm.requests[1].body["stream"] is True


async def test_the_budget_leaves_out_the_oldest_turns_first_and_no_answer_without_its_question(
        database: Database) -> None:
    for n in range(6):
        q = await queries.add_coach_message(database, "ann", "user", f"question {n} " * 5, "done")
        await queries.add_coach_message(database, "ann", "assistant", f"answer {n} " * 10,
                                        "done" if n != 4 else "failed", q["message_id"])
    question = await queries.add_coach_message(database, "ann", "user", "now?", "done")
    # 380 characters leave 326 for the conversation: answer 5, question 5, question 4 (its
    # answer failed), answer 3 (290), but not question 3 (55 more): so not answer 3 either.
    builder = PromptBuilder(database, "Be brief.", budget=380)

    messages = await builder.build("ann", question)

    assert sum(len(m["content"]) for m in messages) <= 380
    assert messages[1]["content"] == "Athlete context: no workout recorded yet."
    turns = [m["content"] for m in messages[2:-1]]
    assert turns == ["question 4 " * 5, "question 5 " * 5, "answer 5 " * 10]
    wider = await PromptBuilder(database, "Be brief.", budget=500).build("ann", question)
    assert [m["content"] for m in wider[2:4]] == ["question 3 " * 5, "answer 3 " * 10]
    assert messages[-1] == {"role": "user", "content": "now?"}


def test_the_system_prompt_may_come_from_a_file(tmp_path: Path) -> None:
    prompt = tmp_path / "coach.txt"
    prompt.write_text("You coach powerlifters.\n", encoding="utf-8")
    assert system_prompt_of(Settings(coach_system_prompt_file=str(prompt))) == (
        "You coach powerlifters.")
    assert system_prompt_of(Settings(coach_system_prompt="Hi.")) == "Hi."
