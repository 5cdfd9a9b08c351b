"""A small answer-quality eval of the embedded chat LLMs, spoken-assistant style (issue 20: choose the default
model by measurement).

    python -m bench.llm_eval [--models qwen2.5-coder-0.5b-instruct,smollm2-135m-instruct] [--backend llamacpp]
                             [--verbose] [--probe-gguf PATH --probe-template gemma]

32 questions in four categories, asked as a voice session asks them (the realtime session's default
instructions as the system message, greedy, at most 96 new tokens) through the ``ChatEngine`` the server uses:

* ``facts`` (10): one question, graded by substring (any accepted string, case-insensitive, at a word's start;
  one shorter than 4 characters must be a whole word).
* ``arithmetic`` (8): graded by number: the expected value must be among the numbers the answer writes, in
  digits or in words ("twelve", "one hundred and forty-four"); a wrong number written next to it still counts.
* ``follow-ups`` (6): a multi-turn conversation; every turn before the last is answered by the model itself
  (its own words go into the history, as in a voice session), only the last answer is graded (substring / number).
* ``tools`` (8): ``get_weather`` and ``set_timer`` offered, ``tool_choice: "auto"``, decoded under the tool grammar
  (:mod:`runtime.llm.tool_constraint`). Six need a call: right = a call of the expected tool with arguments valid
  for its schema and the expected value (city / minutes), then — given the tool's result as a ``role: tool``
  message — a text answer (no second call) that uses the result (its temperature or sky). A *round trip* counts
  as completed when the call is valid and the next turn answers in text, whatever the words. Two need no call:
  right = plain text, no call, and the answer's content.

Per model: % right per category and overall, tool round trips completed, decode tok/s (median over answers of
more than 8 tokens: tokens after the first / time after the first) and time to first text (median). The rules are
``text_right``, ``valid_call`` and ``run_case`` here; ``--verbose`` prints every answer next to its grade. They are
lenient on purpose (a wrong number next to the right one passes, an answer that echoes the user's own words
passes a follow-up), so a model's score here is an upper bound.

``--probe-gguf PATH`` runs the text categories on a GGUF our engine has no chat format for (llama.cpp directly,
a turn template from ``PROBE_TEMPLATES``, no tools): the way to look at a packaged candidate before adding it.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import statistics
import time
from dataclasses import dataclass, field

from runtime.chat_api import ChatMessage, ChatRequest, ToolCall, ToolSpec

WEATHER = ToolSpec("get_weather", "Get the current weather for a city",
                   {"type": "object", "properties": {"city": {"type": "string", "description": "the city name"}},
                    "required": ["city"]})
TIMER = ToolSpec("set_timer", "Start a countdown timer",
                 {"type": "object", "properties": {"minutes": {"type": "integer", "description": "length in minutes"}},
                  "required": ["minutes"]})
TOOLS = (WEATHER, TIMER)


@dataclass(frozen=True)
class Case:
    category: str
    turns: tuple[str, ...]                      # user turns; the model answers each one
    accept: tuple[str, ...] = ()                # substrings, any of which makes the last answer right
    number: float | None = None                 # or: this number among the answer's numbers
    tool: str | None = None                     # tools: the call expected (None = no call expected)
    arg: tuple[str, object] | None = None       # (argument, expected value) of that call
    result: dict = field(default_factory=dict)  # what the tool answers
    answer_uses: tuple[str, ...] = ()           # the text answer after the result must hold one of these


CASES: tuple[Case, ...] = (
    # facts
    Case("facts", ("What's the capital of France?",), ("Paris",)),
    Case("facts", ("Which planet is known as the red planet?",), ("Mars",)),
    Case("facts", ("Who wrote Romeo and Juliet?",), ("Shakespeare",)),
    Case("facts", ("What's the largest ocean on Earth?",), ("Pacific",)),
    Case("facts", ("What language do people speak in Brazil?",), ("Portuguese",)),
    Case("facts", ("What do bees make?",), ("honey",)),
    Case("facts", ("What's the chemical symbol for gold?",), ("Au",)),
    Case("facts", ("At what temperature does water freeze in Celsius?",), number=0),
    Case("facts", ("What's the capital of Japan?",), ("Tokyo",)),
    Case("facts", ("How many continents are there?",), number=7),
    # arithmetic
    Case("arithmetic", ("What's seven plus eight?",), number=15),
    Case("arithmetic", ("What is twelve times twelve?",), number=144),
    Case("arithmetic", ("What's one hundred minus thirty-five?",), number=65),
    Case("arithmetic", ("What is half of fifty?",), number=25),
    Case("arithmetic", ("If I have three boxes with four apples in each, how many apples do I have?",), number=12),
    Case("arithmetic", ("What's nine times six?",), number=54),
    Case("arithmetic", ("How many minutes are in two hours?",), number=120),
    Case("arithmetic", ("What is twenty divided by four?",), number=5),
    # follow-ups (multi-turn; only the last answer is graded)
    Case("follow-ups", ("Hi, my name is Maria.", "What's my name?"), ("Maria",)),
    Case("follow-ups", ("What's the capital of Italy?", "And what about Spain?"), ("Madrid",)),
    Case("follow-ups", ("What's five plus three?", "Now multiply that by two."), number=16),
    Case("follow-ups", ("I'm planning a trip to Canada next week.", "Which country did I say I'm visiting?"),
         ("Canada",)),
    Case("follow-ups", ("My favourite colour is green.", "Remind me, what's my favourite colour?"), ("green",)),
    Case("follow-ups", ("I have two cats and one dog.", "How many pets do I have in total?"), number=3),
    # tools
    Case("tools", ("What's the weather like in Paris right now?",), tool="get_weather", arg=("city", "Paris"),
         result={"city": "Paris", "temperature_c": 18, "sky": "sunny"}, answer_uses=("18", "eighteen", "sunny")),
    Case("tools", ("Is it raining in London?",), tool="get_weather", arg=("city", "London"),
         result={"city": "London", "temperature_c": 11, "sky": "rain"}, answer_uses=("rain", "11", "eleven")),
    Case("tools", ("How hot is it in Cairo today?",), tool="get_weather", arg=("city", "Cairo"),
         result={"city": "Cairo", "temperature_c": 35, "sky": "clear"}, answer_uses=("35", "thirty-five", "clear")),
    Case("tools", ("Can you check the weather in Tokyo for me?",), tool="get_weather", arg=("city", "Tokyo"),
         result={"city": "Tokyo", "temperature_c": 22, "sky": "cloudy"}, answer_uses=("22", "twenty-two", "cloud")),
    Case("tools", ("Set a timer for ten minutes.",), tool="set_timer", arg=("minutes", 10),
         result={"ok": True, "minutes": 10}, answer_uses=("10", "ten", "timer", "set")),
    Case("tools", ("Please start a five minute timer.",), tool="set_timer", arg=("minutes", 5),
         result={"ok": True, "minutes": 5}, answer_uses=("5", "five", "timer", "set")),
    Case("tools", ("What's two plus two?",), number=4),
    Case("tools", ("Say hello to my friend Tom.",), ("Tom",)),
)
CATEGORIES = ("facts", "arithmetic", "follow-ups", "tools")

_UNITS = {w: i for i, w in enumerate("zero one two three four five six seven eight nine ten eleven twelve thirteen "
                                     "fourteen fifteen sixteen seventeen eighteen nineteen".split())}
_TENS = {w: 10 * (i + 2) for i, w in enumerate("twenty thirty forty fifty sixty seventy eighty ninety".split())}


def numbers_in(text: str) -> list[float]:
    """Every number ``text`` writes: digits (``1,200``, ``-3``, ``2.5``) and English number words up to thousands."""
    found = [float(m.replace(",", "")) for m in re.findall(r"-?\d[\d,]*(?:\.\d+)?", text)]
    words = re.findall(r"[a-z]+", text.lower().replace("-", " "))
    value, current, inside, prev = 0, 0, False, ""
    for w in words + [""]:
        if w == "and" and prev in ("hundred", "thousand"):     # "one hundred and five"; "two and two" is two numbers
            continue
        last, prev = prev, w
        if (w in _UNITS and (last in _UNITS or (last in _TENS and _UNITS[w] >= 10))) or (w in _TENS and
                                                                                    (last in _UNITS or last in _TENS)):
            found.append(float(value + current))                # "one, two, three": three numbers, not six
            value, current = 0, 0
        if w in _UNITS:
            current += _UNITS[w]
        elif w in _TENS:
            current += _TENS[w]
        elif w == "hundred" and inside:
            current = max(current, 1) * 100
        elif w == "thousand" and inside:
            value, current = value + max(current, 1) * 1000, 0
        else:
            if inside:
                found.append(float(value + current))
            value, current, inside = 0, 0, False
            continue
        inside = True
    return found


def has_any(text: str, accept: tuple[str, ...]) -> bool:
    """Any accepted string at the start of a word ("rain" in "raining"); one of under 4 characters ("Au", "10")
    must be the whole word."""
    return any(re.search(r"(?<![A-Za-z0-9])" + re.escape(a) + (r"(?![A-Za-z0-9])" if len(a) < 4 else ""), text,
                         re.IGNORECASE) for a in accept)


def text_right(case: Case, text: str) -> bool:
    if case.number is not None:
        return any(abs(n - case.number) < 1e-6 for n in numbers_in(text))
    return has_any(text, case.accept)


def valid_call(case: Case, call: ToolCall) -> tuple[bool, bool]:
    """(the call's arguments are valid for its tool's schema, and it is the expected call with the expected value)."""
    spec = {t.name: t for t in TOOLS}.get(call.name)
    try:
        args = json.loads(call.arguments)
    except ValueError:
        return False, False
    if spec is None or not isinstance(args, dict):
        return False, False
    props = spec.parameters["properties"]
    types = {"string": str, "integer": int}
    ok = (set(spec.parameters["required"]) <= set(args) and set(args) <= set(props)
          and all(isinstance(v, types[props[k]["type"]]) and not isinstance(v, bool) for k, v in args.items()))
    name, want = case.arg or ("", None)
    got = args.get(name)
    expected = call.name == case.tool and (got == want if not isinstance(want, str)
                                           else isinstance(got, str) and want.lower() in got.lower())
    return ok, ok and expected


@dataclass
class Answer:
    text: str
    calls: list[ToolCall]
    finish: str
    tokens: int
    ttft: float | None
    tok_s: float | None


async def ask(engine, messages: list[ChatMessage], tools: tuple[ToolSpec, ...] = (), max_tokens: int = 96) -> Answer:
    req = ChatRequest(messages=tuple(messages), tools=tools, tool_choice="auto", temperature=0.0,
                      max_tokens=max_tokens)
    t0 = time.perf_counter()
    first = last = None
    text, calls, finish, tokens = "", [], "", 0
    async for d in engine.stream(req):
        now = time.perf_counter()
        if first is None and (d.text or d.tool_call):
            first = now
        text += d.text
        if d.tool_call:
            calls.append(d.tool_call)
        if d.finish_reason:
            last, finish, tokens = now, d.finish_reason, d.completion_tokens
    rate = (tokens - 1) / (last - first) if first and tokens > 8 and last > first else None
    return Answer(text.strip(), calls, finish, tokens, first - t0 if first else None, rate)


async def run_case(engine, case: Case, system: str) -> dict:
    messages = [ChatMessage("system", system)]
    answers: list[Answer] = []
    for turn in case.turns:
        messages.append(ChatMessage("user", turn))
        a = await ask(engine, messages, TOOLS if case.category == "tools" else ())
        answers.append(a)
        messages.append(ChatMessage("assistant", a.text, tuple(a.calls)))
    last = answers[-1]
    row = {"case": case, "answers": answers, "round_trip": None, "note": ""}
    if case.category != "tools" or case.tool is None:
        row["right"] = not last.calls and bool(last.text) and text_right(case, last.text)
        if last.calls:
            row["note"] = f"unexpected call {last.calls[0].name}({last.calls[0].arguments})"
        return row
    if len(last.calls) != 1:
        row.update(right=False, round_trip=False, note=f"{len(last.calls)} calls; text {last.text!r}")
        return row
    call = last.calls[0]
    valid, expected = valid_call(case, call)
    if not valid:
        row.update(right=False, round_trip=False, note=f"invalid call {call.name}({call.arguments})")
        return row
    messages.append(ChatMessage("tool", json.dumps(case.result), tool_call_id=call.id))
    follow = await ask(engine, messages, TOOLS)
    answers.append(follow)
    row["round_trip"] = bool(follow.text) and not follow.calls
    row["right"] = expected and row["round_trip"] and has_any(follow.text, case.answer_uses)
    row["note"] = f"call {call.name}({call.arguments})" + ("" if expected else " (not the expected call)")
    return row


def load(model: str, backend: str):
    from runtime.llm.loader import load_llamacpp_engine, load_torch_engine
    from runtime.llm.torch_engine import EngineOptions

    options = EngineOptions(slots=1, capacity=2048)
    return load_llamacpp_engine(model, options) if backend == "llamacpp" else load_torch_engine(model, options)


def evaluate(engine, system: str, verbose: bool = False) -> dict:
    rows = []
    for case in CASES:
        row = asyncio.run(run_case(engine, case, system))
        rows.append(row)
        if verbose:
            said = " | ".join(a.text or "(call)" for a in row["answers"])
            print(f"  [{'ok' if row['right'] else '--'}] {case.category:10} {case.turns[-1]!r} -> {said!r}"
                  f"{'  ' + row['note'] if row['note'] else ''}", flush=True)
    answers = [a for r in rows for a in r["answers"]]
    per = {c: [r["right"] for r in rows if r["case"].category == c] for c in CATEGORIES}
    trips = [r["round_trip"] for r in rows if r["round_trip"] is not None or r["case"].tool]
    return {"per": {c: (sum(v), len(v)) for c, v in per.items()},
            "right": sum(r["right"] for r in rows), "total": len(rows),
            "trips": (sum(bool(t) for t in trips), len(trips)),
            "tok_s": statistics.median([a.tok_s for a in answers if a.tok_s]),
            "ttft": statistics.median([a.ttft for a in answers if a.ttft is not None])}


#: turn templates for --probe-gguf (GGUFs our engine has no chat format for), as text llama.cpp tokenizes itself
PROBE_TEMPLATES = {
    "gemma": ("<start_of_turn>user\n{system}\n\n{first}<end_of_turn>\n", "<start_of_turn>user\n{text}<end_of_turn>\n",
              "<start_of_turn>model\n{text}<end_of_turn>\n", "<start_of_turn>model\n"),
}


def probe_gguf(path: str, template: str, system: str, verbose: bool = False) -> dict:
    """The text categories (no tools: our engine has no tool format for the file) on a GGUF run by llama.cpp
    directly with ``PROBE_TEMPLATES[template]``; same questions, same grading, greedy, 96 tokens."""
    import xllamacpp

    first_t, user_t, model_t, gen = PROBE_TEMPLATES[template]
    params = xllamacpp.CommonParams()
    params.model.path = path
    params.n_parallel, params.n_ctx = 1, 2048
    params.cpuparams.n_threads = params.cpuparams_batch.n_threads = len(os.sched_getaffinity(0))
    params.verbosity = -1
    server = xllamacpp.Server(params)
    rows, rates = [], []
    for case in CASES:
        if case.category == "tools":
            continue
        history, texts = "", []
        for i, turn in enumerate(case.turns):
            history += (first_t.format(system=system, first=turn) if i == 0 else user_t.format(text=turn))
            state = {"text": "", "t": [], "n": 0}

            def on_chunk(chunk: dict) -> bool:
                choice = (chunk.get("choices") or [{}])[0]
                state["text"] += choice.get("text") or ""
                state["t"].append(time.perf_counter())
                state["n"] = int((chunk.get("timings") or {}).get("predicted_n", state["n"]))
                return False

            server.handle_completions({"prompt": history + gen, "stream": True, "n_predict": 96, "temperature": 0.0,
                                       "timings_per_token": True, "cache_prompt": True}, on_chunk)
            text = state["text"].split("<end_of_turn>")[0].strip()
            if state["n"] > 8 and len(state["t"]) > 1 and state["t"][-1] > state["t"][0]:
                rates.append((state["n"] - 1) / (state["t"][-1] - state["t"][0]))
            texts.append(text)
            history += model_t.format(text=text)
        right = bool(texts[-1]) and text_right(case, texts[-1])
        rows.append((case.category, right))
        if verbose:
            print(f"  [{'ok' if right else '--'}] {case.category:10} {case.turns[-1]!r} -> {' | '.join(texts)!r}",
                  flush=True)
    per = {c: (sum(r for k, r in rows if k == c), sum(1 for k, _ in rows if k == c)) for c in CATEGORIES[:3]}
    return {"per": per, "right": sum(r for _, r in rows), "total": len(rows),
            "tok_s": statistics.median(rates) if rates else float("nan")}


def main() -> None:
    from dataclasses import fields

    from bench.common import machine, today
    from realtime.config import SessionConfig

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default="qwen2.5-coder-0.5b-instruct,smollm2-135m-instruct")
    ap.add_argument("--backend", default="llamacpp", choices=("llamacpp", "torch"))
    ap.add_argument("--verbose", action="store_true")
    ap.add_argument("--probe-gguf", help="also probe this GGUF (text categories only) with --probe-template")
    ap.add_argument("--probe-template", default="gemma", choices=sorted(PROBE_TEMPLATES))
    args = ap.parse_args()
    system = next(f.default for f in fields(SessionConfig) if f.name == "instructions")
    if args.probe_gguf:
        r = probe_gguf(args.probe_gguf, args.probe_template, system, args.verbose)
        cells = " | ".join(f"{100 * k / n:.0f}% ({k}/{n})" for k, n in r["per"].values())
        print(f"| {args.probe_gguf} (probe, {args.probe_template} template) | {cells} | not run | "
              f"{100 * r['right'] / r['total']:.0f}% ({r['right']}/{r['total']}, text categories) | - | "
              f"{r['tok_s']:.1f} | - |")
        if not args.models:
            return

    results = {}
    for model in args.models.split(","):
        engine = load(model, args.backend)
        asyncio.run(ask(engine, [ChatMessage("user", "Say hello.")], max_tokens=8))          # warm-up
        print(f"{model} ({args.backend}):", flush=True)
        results[model] = evaluate(engine, system, args.verbose)
        engine.close()

    print(f"\n{today()}; {machine()}; backend {args.backend}; greedy, at most 96 new tokens; system prompt = the "
          f"realtime session's default instructions; {len(CASES)} questions")
    print("| model | " + " | ".join(CATEGORIES) + " | overall | tool round trips | decode tok/s | TTFT (s) |")
    print("|---|" + "---|" * (len(CATEGORIES) + 4))
    for model, r in results.items():
        cells = [f"{100 * k / n:.0f}% ({k}/{n})" for k, n in (r["per"][c] for c in CATEGORIES)]
        print(f"| {model} | " + " | ".join(cells) + f" | **{100 * r['right'] / r['total']:.0f}%** "
              f"({r['right']}/{r['total']}) | {r['trips'][0]}/{r['trips'][1]} | {r['tok_s']:.1f} | {r['ttft']:.2f} |")


if __name__ == "__main__":
    main()
