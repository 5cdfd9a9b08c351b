"""Session configuration: one frozen dataclass per concept, parsed from either dialect's `session.update`.

GA (`session.audio.input.format/turn_detection/transcription`, `audio.output.format/voice/speed`,
`output_modalities`, `max_output_tokens`) and beta (`modalities`, `input_audio_format`, `output_audio_format`,
top-level `turn_detection`, `voice`, `input_audio_transcription`, `max_response_output_tokens`) are both
accepted on every connection; the serializer writes the connection's own dialect back. Updates are partial:
a key that is absent keeps its value, `null` clears what may be cleared (turn detection, transcription).
Every bad value raises `ConfigError` with the parameter path, which becomes an `error` event.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace

from realtime.audio import PCM16, AudioFormat, parse_format
from realtime.languages import UnknownLanguage, whisper_language

MAX_OUTPUT_TOKENS_CAP = 1024  # what "inf" means here: a 0.5B model on CPU answers a voice turn in far fewer
VOICES_HINT = "joe (OpenAI voice names are accepted as aliases)"
#: Longest `instructions` (session or response). OpenAI documents no limit; its realtime models' context is
#: 32k tokens (~128k characters) and ours hold 4k. Every response renders and tokenizes them again, so a
#: 15 MB string cost ~12 s of CPU per `response.create`: anything past this cannot be a prompt.
MAX_INSTRUCTIONS_CHARS = 64 * 1024
#: Most function tools, and the characters of their names, descriptions and JSON schemas together (they are
#: rendered into every prompt too). OpenAI's chat API takes at most 128 tools.
MAX_TOOLS = 128
MAX_TOOLS_CHARS = 64 * 1024


class ConfigError(ValueError):
    def __init__(self, message: str, param: str | None = None, code: str = "invalid_value"):
        super().__init__(message)
        self.message, self.param, self.code = message, param, code


@dataclass(frozen=True)
class Eagerness:
    """semantic_vad at one eagerness. Audio (Smart Turn): end at a short pause when P(complete) ≥ `threshold`,
    else at `max_silence_ms`. Words (the chat model's P(end) of the turn so far, `runtime.llm.turn_end`), where the
    engine can judge them: `text_tiers` are (lowest P(end), silence that ends the turn), surest first. Words in
    the first tier end the turn at Smart Turn's "complete" or after that tier's silence, whichever comes first;
    in a later tier, after its silence; below every tier (unfinished words) only `max_silence_ms` ends it."""

    threshold: float
    max_silence_ms: int
    text_tiers: tuple[tuple[float, int], ...] = ((0.1, 500), (0.01, 750))

    def text_silence_ms(self, p_end: float) -> tuple[int, bool]:
        """The silence that ends a turn whose words score `p_end`, and whether Smart Turn may end it sooner."""
        for i, (lowest, silence_ms) in enumerate(self.text_tiers):
            if p_end >= lowest:
                return silence_ms, i == 0
        return self.max_silence_ms, False


#: high ends soonest (a likely-complete turn at the first pause, and any pause past 600 ms); low lets the speaker
#: think (only a turn the model is sure of ends early, and a pause must reach 2 s). medium (= auto, OpenAI's
#: default) waits past the 300–700 ms pauses people make inside a question. Thresholds from bench/smart_turn.py:
#: complete sentences score 0.85–0.99 at the pause, the same audio cut mid-word a median 0.1–0.8. Text tiers
#: from runtime.llm.turn_end on the packaged Qwen2.5 0.5B: unfinished questions ("Can you tell me", "How many
#: legs", "What is the opposite") < 0.003, whole questions mostly 0.3–0.99, short complete turns ("Tell me a
#: joke", "Yes", "Thanks") 0.03–0.08.
SEMANTIC_EAGERNESS = {
    "high": Eagerness(threshold=0.5, max_silence_ms=600, text_tiers=((0.05, 300), (0.002, 450))),
    "medium": Eagerness(threshold=0.8, max_silence_ms=1000),
    "auto": Eagerness(threshold=0.8, max_silence_ms=1000),
    "low": Eagerness(threshold=0.95, max_silence_ms=2000, text_tiers=((0.3, 800), (0.03, 1200))),
}


@dataclass(frozen=True)
class TurnDetection:
    """`server_vad` (a turn ends after `silence_duration_ms` of silence) or `semantic_vad` (Smart Turn decides at
    the first short pause whether the turn sounds complete; `eagerness` picks how sure it must be and how long a
    silence ends the turn anyway — see `SEMANTIC_EAGERNESS`)."""

    type: str = "server_vad"
    threshold: float = 0.5
    prefix_padding_ms: int = 300
    silence_duration_ms: int = 500
    create_response: bool = True
    interrupt_response: bool = True
    idle_timeout_ms: int | None = None
    eagerness: str = "auto"

    def __post_init__(self) -> None:
        if self.type not in ("server_vad", "semantic_vad"):
            raise ConfigError(f"turn_detection.type must be server_vad or semantic_vad (got {self.type!r})",
                              "turn_detection.type")
        if not 0.0 < self.threshold < 1.0:
            raise ConfigError("threshold must be between 0 and 1 (exclusive)", "turn_detection.threshold")
        if not 0 <= self.prefix_padding_ms <= 5000:
            raise ConfigError("prefix_padding_ms must be between 0 and 5000", "turn_detection.prefix_padding_ms")
        if not 100 <= self.silence_duration_ms <= 10000:
            raise ConfigError("silence_duration_ms must be between 100 and 10000",
                              "turn_detection.silence_duration_ms")
        if self.eagerness not in ("low", "medium", "high", "auto"):
            raise ConfigError("eagerness must be low, medium, high or auto", "turn_detection.eagerness")

    @property
    def effective_silence_ms(self) -> int:
        """The silence that ends a turn whatever the turn model said (for semantic_vad: the eagerness's longest wait)."""
        if self.type == "semantic_vad":
            return SEMANTIC_EAGERNESS[self.eagerness].max_silence_ms
        return self.silence_duration_ms

    @property
    def eagerness_rule(self) -> Eagerness | None:
        """semantic_vad: how its eagerness decides (None: server_vad)."""
        return SEMANTIC_EAGERNESS[self.eagerness] if self.type == "semantic_vad" else None

    @property
    def completion_threshold(self) -> float | None:
        """semantic_vad: the Smart Turn probability at a short pause that ends the turn there (None: server_vad)."""
        return SEMANTIC_EAGERNESS[self.eagerness].threshold if self.type == "semantic_vad" else None

    def to_wire(self) -> dict:
        out: dict = {"type": self.type, "create_response": self.create_response,
                     "interrupt_response": self.interrupt_response}
        if self.type == "server_vad":
            out.update(threshold=self.threshold, prefix_padding_ms=self.prefix_padding_ms,
                       silence_duration_ms=self.silence_duration_ms, idle_timeout_ms=self.idle_timeout_ms)
        else:
            out["eagerness"] = self.eagerness
        return out


#: the shortest speculative pause: past it the span a turn commits (speech end + realtime.turns.TAIL_MS, 150 ms) is
#: already in the buffer, so a speculation covers exactly the audio the turn will commit if it ends there
MIN_SPECULATIVE_MS = 160


@dataclass(frozen=True)
class Speculation:
    """Server setting: what a session starts at a short pause inside a turn, before the turn is confirmed.

    At `pause_ms` of silence the turn so far is transcribed; with `responses` the LLM and TTS also start on it,
    sending nothing. If the turn then ends at that same pause (the audio did not grow with speech), that prepared
    response goes out at once; if the user goes on speaking it is dropped without a trace (no event, no item,
    nothing in the next prompt) and a later pause may speculate again on the longer turn. Only where the session
    would create the response itself (turn detection with `create_response`, no response in progress)."""

    pause_ms: int = 160
    responses: bool = True

    def __post_init__(self) -> None:
        if not MIN_SPECULATIVE_MS <= self.pause_ms <= 2000:
            raise ConfigError(f"the speculative pause must be between {MIN_SPECULATIVE_MS} and 2000 ms",
                              "speculation.pause_ms")


@dataclass(frozen=True)
class Transcription:
    model: str = "whisper-1"
    language: str | None = None
    prompt: str | None = None

    def to_wire(self) -> dict:
        out: dict = {"model": self.model}
        if self.language:
            out["language"] = self.language
        if self.prompt:
            out["prompt"] = self.prompt
        return out


@dataclass(frozen=True)
class Tool:
    name: str
    description: str = ""
    parameters: dict = field(default_factory=lambda: {"type": "object", "properties": {}})

    def to_wire(self) -> dict:
        return {"type": "function", "name": self.name, "description": self.description,
                "parameters": self.parameters}


@dataclass(frozen=True)
class SessionConfig:
    model: str = "voxline-realtime"
    instructions: str = ("You are a helpful voice assistant. Answer in one or two short spoken sentences, "
                         "without lists or markdown.")
    audio_out: bool = True  # output modalities: ["audio"] (audio + transcript) or ["text"]
    input_format: AudioFormat = PCM16
    output_format: AudioFormat = PCM16
    voice: str = "joe"
    speed: float = 1.0
    turn_detection: TurnDetection | None = TurnDetection()
    transcription: Transcription | None = Transcription()
    noise_reduction: dict | None = None  # accepted and echoed; no filter is applied
    tools: tuple[Tool, ...] = ()
    tool_choice: str = "auto"  # auto | none | required | a function name
    max_output_tokens: int | str = "inf"
    # OpenAI's default is 0.8; a 0.5B model answers factual questions more reliably a little cooler
    # (0.6 is the lowest OpenAI's beta accepted).
    temperature: float = 0.6

    @property
    def max_tokens(self) -> int:
        return MAX_OUTPUT_TOKENS_CAP if self.max_output_tokens == "inf" else int(self.max_output_tokens)


# ---- parsing ---------------------------------------------------------------------------------------------
_IGNORED = {"type", "object", "id", "model", "include", "tracing", "truncation", "prompt", "reasoning",
            "parallel_tool_calls", "client_secret", "expires_at", "input_audio_noise_reduction"}


def _check_keys(d: dict, allowed: set[str], where: str) -> None:
    for key in d:
        if key not in allowed:
            raise ConfigError(f"unknown parameter '{where}.{key}'", f"{where}.{key}", code="unknown_parameter")


def _obj(value: object, where: str) -> dict:
    if not isinstance(value, dict):
        raise ConfigError(f"'{where}' must be an object", where)
    return value


def parse_modalities(value: object, where: str) -> bool:
    """→ audio_out. ["audio"], ["text", "audio"] → True; ["text"] → False."""
    if not isinstance(value, list) or not value or any(m not in ("text", "audio") for m in value):
        raise ConfigError(f"'{where}' must be a non-empty list of 'text' / 'audio'", where)
    return "audio" in value


def parse_max_tokens(value: object, where: str) -> int | str:
    if value == "inf":
        return "inf"
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 4096:
        raise ConfigError(f"'{where}' must be an integer between 1 and 4096 or \"inf\"", where)
    return value


def parse_voice(value: object, where: str) -> str:
    name = value.get("id") if isinstance(value, dict) else value
    if not isinstance(name, str) or not name.strip():
        raise ConfigError(f"'{where}' must be a voice name; available: {VOICES_HINT}", where)
    from tts.piper_tts import DEFAULT_VOICE, OPENAI_VOICE_ALIASES

    if name.strip().lower() not in (DEFAULT_VOICE, *OPENAI_VOICE_ALIASES):
        raise ConfigError(f"unknown voice {name!r}; available: {VOICES_HINT}", where)
    return name.strip().lower()


def parse_instructions(value: object, where: str) -> str:
    if not isinstance(value, str):
        raise ConfigError("'instructions' must be a string", where)
    if len(value) > MAX_INSTRUCTIONS_CHARS:
        raise ConfigError(f"'instructions' is {len(value)} characters; at most {MAX_INSTRUCTIONS_CHARS} are "
                          "accepted", where, code="string_above_max_length")
    return value


def parse_tools(value: object, where: str) -> tuple[Tool, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise ConfigError(f"'{where}' must be a list of function tools", where)
    if len(value) > MAX_TOOLS:
        raise ConfigError(f"at most {MAX_TOOLS} tools are accepted (got {len(value)})", where,
                          code="array_above_max_length")
    tools = []
    for i, t in enumerate(value):
        t = _obj(t, f"{where}[{i}]")
        if t.get("type", "function") != "function":
            raise ConfigError(f"only function tools are supported (got type {t.get('type')!r})", f"{where}[{i}].type")
        fn = t.get("function") if isinstance(t.get("function"), dict) else t  # accept the chat-completions shape
        name = fn.get("name")
        if not isinstance(name, str) or not name:
            raise ConfigError("a function tool needs a 'name'", f"{where}[{i}].name")
        params = fn.get("parameters") or {"type": "object", "properties": {}}
        if not isinstance(params, dict):
            raise ConfigError("'parameters' must be a JSON schema object", f"{where}[{i}].parameters")
        tools.append(Tool(name, str(fn.get("description") or ""), params))
    chars = sum(len(t.name) + len(t.description) + len(json.dumps(t.parameters)) for t in tools)
    if chars > MAX_TOOLS_CHARS:
        raise ConfigError(f"the tools' names, descriptions and schemas hold {chars} characters; at most "
                          f"{MAX_TOOLS_CHARS} are accepted", where, code="string_above_max_length")
    return tuple(tools)


def parse_tool_choice(value: object, where: str) -> str:
    if isinstance(value, str) and value in ("auto", "none", "required"):
        return value
    if isinstance(value, dict) and value.get("type") == "function":
        function = value.get("function")  # the chat-completions shape; anything but an object is ignored
        name = value.get("name") or (function.get("name") if isinstance(function, dict) else None)
        if isinstance(name, str) and name:
            return name
    raise ConfigError(f"'{where}' must be auto, none, required or {{\"type\": \"function\", \"name\": …}}", where)


def _turn_detection(current: TurnDetection | None, value: object, where: str) -> TurnDetection | None:
    if value is None:
        return None
    d = _obj(value, where)
    _check_keys(d, {"type", "threshold", "prefix_padding_ms", "silence_duration_ms", "create_response",
                    "interrupt_response", "idle_timeout_ms", "eagerness"}, where)
    base = current or TurnDetection()
    if "type" in d and d["type"] != base.type:
        base = TurnDetection(type=d["type"]) if d["type"] in ("server_vad", "semantic_vad") else base
    kwargs: dict = {}
    for key, kind in (("type", str), ("threshold", (int, float)), ("prefix_padding_ms", int),
                      ("silence_duration_ms", int), ("create_response", bool), ("interrupt_response", bool),
                      ("eagerness", str)):
        if key in d:
            v = d[key]
            if not isinstance(v, kind) or (kind is int and isinstance(v, bool)):
                raise ConfigError(f"'{where}.{key}' has the wrong type", f"{where}.{key}")
            kwargs[key] = float(v) if key == "threshold" else v
    if "idle_timeout_ms" in d:
        v = d["idle_timeout_ms"]
        if v is not None and (not isinstance(v, int) or isinstance(v, bool) or not 5000 <= v <= 30000):
            raise ConfigError("idle_timeout_ms must be null or between 5000 and 30000", f"{where}.idle_timeout_ms")
        kwargs["idle_timeout_ms"] = v
    try:
        return replace(base, **kwargs)
    except ConfigError as exc:
        raise ConfigError(exc.message, f"{where}.{(exc.param or '').split('.')[-1]}") from None


def _transcription(value: object, where: str) -> Transcription | None:
    if value is None:
        return None
    d = _obj(value, where)
    _check_keys(d, {"model", "language", "prompt", "delay", "keywords", "languages"}, where)
    model = d.get("model") or "whisper-1"
    if not isinstance(model, str):
        raise ConfigError("'model' must be a string", f"{where}.model")
    language = d.get("language")
    if language is not None and not isinstance(language, str):
        raise ConfigError("'language' must be an ISO-639-1 code such as 'en'", f"{where}.language")
    try:
        language = whisper_language(language)
    except UnknownLanguage as exc:
        raise ConfigError(str(exc), f"{where}.language") from None
    prompt = d.get("prompt")
    if prompt is not None and not isinstance(prompt, str):
        raise ConfigError("'prompt' must be a string", f"{where}.prompt")
    return Transcription(model, language or None, prompt or None)


def _format(value: object, where: str) -> AudioFormat:
    try:
        return parse_format(value)
    except ValueError as exc:
        raise ConfigError(str(exc), where) from None


def apply_update(config: SessionConfig, update: object, *, audio_sent: bool = False) -> SessionConfig:
    """`session.update`'s `session` object (either dialect) applied to `config`. Raises ConfigError."""
    s = _obj(update, "session")
    _check_keys(s, _IGNORED | {"instructions", "output_modalities", "modalities", "audio", "input_audio_format",
                               "output_audio_format", "turn_detection", "voice", "input_audio_transcription",
                               "tools", "tool_choice", "max_output_tokens", "max_response_output_tokens",
                               "temperature", "speed"}, "session")
    if s.get("type") not in (None, "realtime"):
        raise ConfigError("this endpoint runs 'realtime' sessions (transcription sessions are not supported)",
                          "session.type")
    c: dict = {}
    if "instructions" in s:
        value = s["instructions"]
        c["instructions"] = parse_instructions("" if value is None else value, "session.instructions")
    if "output_modalities" in s:
        c["audio_out"] = parse_modalities(s["output_modalities"], "session.output_modalities")
    if "modalities" in s:
        c["audio_out"] = parse_modalities(s["modalities"], "session.modalities")
    voice = None
    if "voice" in s:
        voice = parse_voice(s["voice"], "session.voice")
    if "input_audio_format" in s:
        c["input_format"] = _format(s["input_audio_format"], "session.input_audio_format")
    if "output_audio_format" in s:
        c["output_format"] = _format(s["output_audio_format"], "session.output_audio_format")
    if "turn_detection" in s:
        c["turn_detection"] = _turn_detection(config.turn_detection, s["turn_detection"], "session.turn_detection")
    if "input_audio_transcription" in s:
        c["transcription"] = _transcription(s["input_audio_transcription"], "session.input_audio_transcription")
    if "speed" in s:
        c["speed"] = s["speed"]
    if s.get("audio") is not None:
        audio = _obj(s["audio"], "session.audio")
        _check_keys(audio, {"input", "output"}, "session.audio")
        if audio.get("input") is not None:
            inp = _obj(audio["input"], "session.audio.input")
            _check_keys(inp, {"format", "turn_detection", "transcription", "noise_reduction"}, "session.audio.input")
            if "format" in inp:
                c["input_format"] = _format(inp["format"], "session.audio.input.format")
            if "turn_detection" in inp:
                c["turn_detection"] = _turn_detection(config.turn_detection, inp["turn_detection"],
                                                      "session.audio.input.turn_detection")
            if "transcription" in inp:
                c["transcription"] = _transcription(inp["transcription"], "session.audio.input.transcription")
            if "noise_reduction" in inp:
                nr = inp["noise_reduction"]
                c["noise_reduction"] = _obj(nr, "session.audio.input.noise_reduction") if nr is not None else None
        if audio.get("output") is not None:
            out = _obj(audio["output"], "session.audio.output")
            _check_keys(out, {"format", "voice", "speed"}, "session.audio.output")
            if "format" in out:
                c["output_format"] = _format(out["format"], "session.audio.output.format")
            if "voice" in out:
                voice = parse_voice(out["voice"], "session.audio.output.voice")
            if "speed" in out:
                c["speed"] = out["speed"]
    if voice is not None:
        if audio_sent and voice != config.voice:
            raise ConfigError("the voice cannot be changed after the assistant has spoken in this session",
                              "session.voice", code="cannot_update_voice")
        c["voice"] = voice
    if "speed" in c and (isinstance(c["speed"], bool) or not isinstance(c["speed"], (int, float))
                         or not 0.25 <= c["speed"] <= 1.5):
        raise ConfigError("speed must be between 0.25 and 1.5", "session.audio.output.speed")
    if "tools" in s:
        c["tools"] = parse_tools(s["tools"], "session.tools")
    if "tool_choice" in s:
        c["tool_choice"] = parse_tool_choice(s["tool_choice"], "session.tool_choice")
    for key in ("max_output_tokens", "max_response_output_tokens"):
        if key in s:
            c["max_output_tokens"] = parse_max_tokens(s[key], f"session.{key}")
    if "temperature" in s:
        t = s["temperature"]
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not 0.0 <= t <= 2.0:
            raise ConfigError("temperature must be between 0 and 2", "session.temperature")
        c["temperature"] = float(t)
    return replace(config, **c)


# ---- the session object as each dialect writes it ------------------------------------------------------
def session_to_ga(config: SessionConfig, session_id: str) -> dict:
    return {
        "type": "realtime", "object": "realtime.session", "id": session_id, "model": config.model,
        "output_modalities": ["audio"] if config.audio_out else ["text"],
        "instructions": config.instructions,
        "audio": {
            "input": {"format": config.input_format.ga_object(),
                      "transcription": config.transcription.to_wire() if config.transcription else None,
                      "noise_reduction": config.noise_reduction,
                      "turn_detection": config.turn_detection.to_wire() if config.turn_detection else None},
            "output": {"format": config.output_format.ga_object(), "voice": config.voice, "speed": config.speed},
        },
        "tools": [t.to_wire() for t in config.tools],
        "tool_choice": _tool_choice_wire(config.tool_choice),
        "max_output_tokens": config.max_output_tokens,
        "tracing": None, "truncation": "auto", "prompt": None, "expires_at": 0, "include": None,
    }


def session_to_beta(config: SessionConfig, session_id: str) -> dict:
    return {
        "id": session_id, "object": "realtime.session", "model": config.model,
        "modalities": ["text", "audio"] if config.audio_out else ["text"],
        "instructions": config.instructions, "voice": config.voice, "speed": config.speed,
        "input_audio_format": config.input_format.beta_name, "output_audio_format": config.output_format.beta_name,
        "input_audio_transcription": config.transcription.to_wire() if config.transcription else None,
        "input_audio_noise_reduction": config.noise_reduction,
        "turn_detection": config.turn_detection.to_wire() if config.turn_detection else None,
        "tools": [t.to_wire() for t in config.tools],
        "tool_choice": _tool_choice_wire(config.tool_choice),
        "temperature": config.temperature,
        "max_response_output_tokens": config.max_output_tokens,
    }


def _tool_choice_wire(choice: str) -> object:
    return choice if choice in ("auto", "none", "required") else {"type": "function", "name": choice}


# ---- per-response overrides (`response.create{response}`) ---------------------------------------------
@dataclass(frozen=True)
class ResponseOptions:
    """What one response runs with: the session's settings with `response.create` overrides on top."""

    instructions: str
    audio_out: bool
    output_format: AudioFormat
    voice: str
    speed: float
    tools: tuple[Tool, ...]
    tool_choice: str
    max_output_tokens: int | str
    temperature: float
    conversation: str = "auto"  # "auto": output joins the conversation; "none": out of band
    input: tuple | None = None  # explicit context items (raw dicts) instead of the conversation
    metadata: dict | None = None

    @property
    def max_tokens(self) -> int:
        return MAX_OUTPUT_TOKENS_CAP if self.max_output_tokens == "inf" else int(self.max_output_tokens)


def response_options(config: SessionConfig, overrides: object) -> ResponseOptions:
    base = ResponseOptions(config.instructions, config.audio_out, config.output_format, config.voice, config.speed,
                           config.tools, config.tool_choice, config.max_output_tokens, config.temperature)
    if overrides is None:
        return base
    r = _obj(overrides, "response")
    _check_keys(r, {"instructions", "output_modalities", "modalities", "audio", "voice", "output_audio_format",
                    "tools", "tool_choice", "max_output_tokens", "max_response_output_tokens", "temperature",
                    "conversation", "input", "metadata", "prompt", "parallel_tool_calls", "reasoning"}, "response")
    c: dict = {}
    if "instructions" in r:
        c["instructions"] = parse_instructions(r["instructions"], "response.instructions")
    for key in ("output_modalities", "modalities"):
        if key in r:
            c["audio_out"] = parse_modalities(r[key], f"response.{key}")
    if "voice" in r:
        c["voice"] = parse_voice(r["voice"], "response.voice")
    if "output_audio_format" in r:
        c["output_format"] = _format(r["output_audio_format"], "response.output_audio_format")
    if r.get("audio") is not None:
        out = _obj(_obj(r["audio"], "response.audio").get("output") or {}, "response.audio.output")
        _check_keys(out, {"format", "voice"}, "response.audio.output")
        if "format" in out:
            c["output_format"] = _format(out["format"], "response.audio.output.format")
        if "voice" in out:
            c["voice"] = parse_voice(out["voice"], "response.audio.output.voice")
    if "tools" in r:
        c["tools"] = parse_tools(r["tools"], "response.tools")
    if "tool_choice" in r:
        c["tool_choice"] = parse_tool_choice(r["tool_choice"], "response.tool_choice")
    for key in ("max_output_tokens", "max_response_output_tokens"):
        if key in r:
            c["max_output_tokens"] = parse_max_tokens(r[key], f"response.{key}")
    if "temperature" in r:
        t = r["temperature"]
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not 0.0 <= t <= 2.0:
            raise ConfigError("temperature must be between 0 and 2", "response.temperature")
        c["temperature"] = float(t)
    if "conversation" in r:
        if r["conversation"] not in ("auto", "none"):
            raise ConfigError("'conversation' must be \"auto\" or \"none\"", "response.conversation")
        c["conversation"] = r["conversation"]
    if "input" in r:
        if not isinstance(r["input"], list):
            raise ConfigError("'input' must be a list of items", "response.input")
        c["input"] = tuple(r["input"])
    if "metadata" in r:
        if r["metadata"] is not None and not isinstance(r["metadata"], dict):
            raise ConfigError("'metadata' must be an object", "response.metadata")
        c["metadata"] = r["metadata"]
    return replace(base, **c)
