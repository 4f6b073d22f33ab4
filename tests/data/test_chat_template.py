"""Jinja chat templates of Hugging Face tokenizers against transformers itself: ids, assistant
masks, render_pair, every refusal as one DataError, and prepare() with data.chat_template.

Each case is a tiny byte-level BPE saved with transformers' `save_pretrained`, so
`AutoTokenizer.from_pretrained(dir).apply_chat_template` is the reference for the same files.
"""

import functools
import json

import pytest
from test_prepare import _config

from llm.data import DataError, chat
from llm.data.prepare import prepare
from llm.data.records import RecordSet
from llm.data.tokenizer import Tokenizer

SPECIALS = ["<|im_start|>", "<|im_end|>", "<|begin_of_text|>", "<|eot_id|>",
            "<|start_header_id|>", "<|end_header_id|>", "<s>", "</s>", "<pad>"]
CORPUS = ["system user assistant: You are a helpful AI assistant named SmolLM.",
          "What is the capital of France? The capital of France is Paris.",
          "def add(a, b):\n    return a + b\n", "Grüße aus Köln — 東京 😀 ça va?",
          "get_weather(city) returns the weather of a city in celsius.",
          "paragraphs\n\n  indented\n\n\nthree newlines\n  code\n\n    more code"] * 20

# SmolLM2-Instruct's template: ChatML with a default system prompt, no generation blocks.
CHATML = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging "
    "Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + "
    "message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|im_start|>assistant\n' }}{% endif %}")
# Llama 3's layout with the assistant's text and <|eot_id|> in {% generation %} blocks.
LLAMA3 = (
    "{{ bos_token }}{% for message in messages %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' }}"
    "{% if message['role'] == 'assistant' %}"
    "{% generation %}{{ message['content'] | trim + '<|eot_id|>' }}{% endgeneration %}"
    "{% else %}{{ message['content'] | trim + '<|eot_id|>' }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}"
    "{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}")
# The same without `trim`: the assistant's text may start with whitespace.
LLAMA3_UNTRIMMED = LLAMA3.replace(" | trim", "")
# Tools as Mistral's templates list them (`tools is not none`, a loop, tojson), before the
# conversation; an assistant turn with `tool_calls` shows the calls.
TOOLS = (
    "{{ bos_token }}{% if tools is not none %}[AVAILABLE_TOOLS]{{ tools | tojson }}"
    "[/AVAILABLE_TOOLS]\n{% for tool in tools %}- {{ tool.function.name }}: "
    "{{ tool.function.description }}\n{% endfor %}{% endif %}"
    "{% for message in messages %}{% if message['role'] == 'system' %}"
    "{{ message['content'] + '\n\n' }}{% elif message['role'] == 'user' %}"
    "[INST] {{ message['content'] }}[/INST]{% elif message['role'] == 'assistant' %}"
    "{% if message.tool_calls is defined %}[TOOL_CALLS]{{ message.tool_calls | tojson }}"
    "{% else %}{{ message['content'] }}{% endif %}{{ eos_token }}"
    "{% else %}{{ raise_exception('Only system, user and assistant roles are supported') }}"
    "{% endif %}{% endfor %}")
# Qwen3's habit: the reasoning of earlier assistant turns is dropped, the last one's kept.
THINK = (
    "{% for message in messages %}{% if message.role == 'assistant' %}"
    "{% set content = message.content %}{% set reasoning = '' %}"
    "{% if message.reasoning_content is string %}{% set reasoning = message.reasoning_content %}"
    "{% elif '</think>' in content %}{% set reasoning = content.split('</think>')[0]"
    ".split('<think>')[-1] %}{% set content = content.split('</think>')[-1] %}{% endif %}"
    "{% if loop.last %}{{ '<|im_start|>assistant\n<think>' + reasoning + '</think>' + content"
    " + '<|im_end|>\n' }}{% else %}{{ '<|im_start|>assistant\n' + content + '<|im_end|>\n' }}"
    "{% endif %}{% else %}{{ '<|im_start|>' + message.role + '\n' + message.content"
    " + '<|im_end|>\n' }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
# Qwen2.5's layout: tools (if any) listed in the system turn.
QWEN_TOOLS = (
    "{% if tools %}{{ '<|im_start|>system\n' }}{% if messages[0].role == 'system' %}"
    "{{ messages[0].content }}{% else %}{{ 'You are a helpful assistant.' }}{% endif %}"
    "{{ '\n\n# Tools\n<tools>' }}{% for tool in tools %}{{ '\n' + tool | tojson }}"
    "{% endfor %}{{ '\n</tools><|im_end|>\n' }}{% elif messages[0].role == 'system' %}"
    "{{ '<|im_start|>system\n' + messages[0].content + '<|im_end|>\n' }}{% endif %}"
    "{% for message in messages %}{% if not (loop.first and message.role == 'system') %}"
    "{{ '<|im_start|>' + message.role + '\n' + message.content + '<|im_end|>\n' }}"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}"
    "{% endif %}")
# Gemma's refusal of a system turn.
NO_SYSTEM = (
    "{% if messages[0]['role'] == 'system' %}"
    "{{ raise_exception('System role not supported') }}{% endif %}"
    "{% for message in messages %}{{ '<|im_start|>' + message.role + '\n' + message.content"
    " + '<|im_end|>\n' }}{% endfor %}")
# Generation blocks, but the generation prompt is not how an assistant turn starts.
ODD_PROMPT = (
    "{% for message in messages %}{{ '<|im_start|>' + message.role + '\n' }}"
    "{% if message.role == 'assistant' %}{% generation %}{{ message.content + '<|im_end|>' }}"
    "{% endgeneration %}{% else %}{{ message.content + '<|im_end|>' }}{% endif %}"
    "{{ '\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n\n' }}"
    "{% endif %}")
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "The weather of a city, in celsius.",
    "parameters": {"type": "object", "properties": {
        "city": {"type": "string", "description": "e.g. Köln"}}, "required": ["city"]}}}
CLOCK = {"type": "function", "function": {
    "name": "get_time", "description": "The time now.",
    "parameters": {"type": "object", "properties": {}}}}

# Llama 3's tokenizer.json splits text with this pattern before its byte-level BPE (runs of
# newlines stay one piece); the others split as GPT-2 does (SmolLM2).
LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
                r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
# Per directory: chat template, (bos, eos, pad) and generation_config's eos list as the models
# these layouts come from have them, and whether text splits as Llama 3's does.
CASES = {
    "chatml": (CHATML, "<|im_start|>", "<|im_end|>", "<|im_end|>", None, False),
    "llama3": (LLAMA3, "<|begin_of_text|>", "<|eot_id|>", None, ["</s>", "<|eot_id|>"], True),
    "blocks_untrimmed": (LLAMA3_UNTRIMMED, "<|begin_of_text|>", "<|eot_id|>", None, None,
                         False),
    "tools": (TOOLS, "<s>", "</s>", None, None, False),
    "think": (THINK, None, "<|im_end|>", "<pad>", None, False),
    "no_system": (NO_SYSTEM, None, "<|im_end|>", None, None, False),
    "odd_prompt": (ODD_PROMPT, None, "<|im_end|>", None, None, False),
    "no_template": (None, "<s>", "</s>", "<pad>", None, False),
    "no_eos": (CHATML, None, None, None, None, False),
}


def _user(text):
    return {"role": "user", "content": text}


def _assistant(text):
    return {"role": "assistant", "content": text}


def _system(text):
    return {"role": "system", "content": text}


CONVERSATIONS = {
    "single": [_user("What is the capital of France?"), _assistant("Paris.")],
    "system": [_system("Answer briefly."), _user("2+2?"), _assistant("4")],
    "multi": [_system("Be kind."), _user("hi"), _assistant("Hello! How can I help?"),
              _user("def add(a, b):\n    return a + b\nexplain"),
              _assistant("It adds\ntwo numbers.")],
    "unicode": [_user("Grüße aus Köln — 東京 😀"), _assistant("ça va? 😀 東京!")],
    "empty": [_user(""), _assistant("")],
    "empty_reply": [_user("say nothing"), _assistant("")],
    "prompt_only": [_user("What is the capital of France?")],
    "ends_with_user": [_user("a"), _assistant("b"), _user("c")],
}


@pytest.fixture(scope="module")
def hf(tmp_path_factory):
    """name -> a Hugging Face tokenizer directory of CASES, saved by transformers."""
    import tokenizers
    import transformers

    bpe = tokenizers.Tokenizer(tokenizers.models.BPE())
    bpe.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = tokenizers.decoders.ByteLevel()
    bpe.train_from_iterator(CORPUS, tokenizers.trainers.BpeTrainer(
        vocab_size=420, special_tokens=SPECIALS,
        initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet()))
    root = tmp_path_factory.mktemp("hf_chat")
    dirs = {}
    for name, (template, bos, eos, pad, eos_list, llama3_split) in CASES.items():
        tok = tokenizers.Tokenizer.from_str(bpe.to_str())
        if llama3_split:
            tok.pre_tokenizer = tokenizers.pre_tokenizers.Sequence([
                tokenizers.pre_tokenizers.Split(tokenizers.Regex(LLAMA3_SPLIT), "isolated"),
                tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
        if bos is not None:  # as Llama's tokenizer.json: encoding a document adds BOS
            tok.post_processor = tokenizers.processors.TemplateProcessing(
                single=f"{bos} $A", special_tokens=[(bos, tok.token_to_id(bos))])
        fast = transformers.PreTrainedTokenizerFast(
            tokenizer_object=tok, bos_token=bos, eos_token=eos, pad_token=pad)
        if template is not None:
            fast.chat_template = template
        fast.save_pretrained(root / name)
        if eos_list:
            (root / name / "generation_config.json").write_text(json.dumps(
                {"eos_token_id": [tok.token_to_id(t) for t in eos_list]}))
        dirs[name] = root / name
    return dirs


@functools.cache
def _reference(directory):
    """transformers' own tokenizer of `directory` (loaded once per directory)."""
    import transformers

    return transformers.AutoTokenizer.from_pretrained(directory)


def _ids(reference, messages, add_generation_prompt=False, **kwargs):
    """transformers' ids (apply_chat_template may return a BatchEncoding)."""
    out = reference.apply_chat_template(messages, tokenize=True,
                                        add_generation_prompt=add_generation_prompt, **kwargs)
    return list(out["input_ids"] if hasattr(out, "keys") else out)


def _runs(ids, mask):
    """The maximal runs of masked ids, in order."""
    runs, current = [], []
    for i, m in zip(ids, mask, strict=True):
        if m:
            current.append(i)
        elif current:
            runs.append(current)
            current = []
    return runs + ([current] if current else [])


# ----- ids ----------------------------------------------------------------------------------
# The tools template is given a tools list here; a row without one has its own test.
ROW_FIELDS = {"tools": {"tools": [WEATHER, CLOCK]}}
PARITY = ([(t, c, g) for t in ("chatml", "llama3", "tools") for c in CONVERSATIONS
           for g in (False, True)]
          + [("think", c, g) for c in ("single", "system", "unicode", "empty", "prompt_only")
             for g in (False, True)])


@pytest.mark.parametrize("name,conversation,generation_prompt", PARITY)
def test_ids_equal_transformers(hf, name, conversation, generation_prompt):
    tok = Tokenizer.load(hf[name])
    messages = CONVERSATIONS[conversation]
    fields = ROW_FIELDS.get(name, {})
    ids, mask = chat.render_messages(tok, messages, generation_prompt, **fields)
    assert ids == _ids(_reference(hf[name]), messages, generation_prompt, **fields)
    assert len(mask) == len(ids)


TOOL_ROWS = {
    "two_tools": ([_user("Weather in Köln?"), _assistant("Sunny, 21°C.")], [WEATHER, CLOCK]),
    "one_tool_multi": ([_system("Use tools."), _user("time?"), _assistant("noon"),
                        _user("and the weather?"), _assistant("rain")], [WEATHER]),
    "empty_list": ([_user("hi"), _assistant("hello")], []),
    "tool_call": ([_user("Weather in Köln?"), {
        "role": "assistant", "content": "",
        "tool_calls": [{"type": "function", "function": {
            "name": "get_weather", "arguments": {"city": "Köln"}}}]}], [WEATHER]),
}


@pytest.mark.parametrize("row", sorted(TOOL_ROWS))
def test_tools_reach_the_template_as_transformers_passes_them(hf, row):
    messages, tools = TOOL_ROWS[row]
    ids, _ = chat.render_messages(Tokenizer.load(hf["tools"]), messages, tools=tools)
    assert ids == _ids(_reference(hf["tools"]), messages, tools=tools)
    text = _reference(hf["tools"]).decode(ids)
    assert "[AVAILABLE_TOOLS]" in text
    assert all(f"- {t['function']['name']}: " in text for t in tools)


def test_a_row_without_tools_renders_as_transformers_without_tools(hf):
    # transformers passes tools=None when a row has none, so `tools is not none` is false
    # (Mistral's templates test exactly this).
    messages = CONVERSATIONS["single"]
    ids, _ = chat.render_messages(Tokenizer.load(hf["tools"]), messages)
    assert ids == _ids(_reference(hf["tools"]), messages)
    assert "[AVAILABLE_TOOLS]" not in _reference(hf["tools"]).decode(ids)


def test_keys_set_to_null_are_absent_as_in_transformers(hf):
    # OpenAI-style rows carry "tool_calls": null; transformers drops null keys before rendering.
    messages = [_user("hi"), {"role": "assistant", "content": "hello", "tool_calls": None}]
    ids, _ = chat.render_messages(Tokenizer.load(hf["tools"]), messages, tools=[WEATHER])
    assert ids == _ids(_reference(hf["tools"]), messages, tools=[WEATHER])


@pytest.mark.parametrize("key", ["reasoning_content", "reasoning", "thinking"])
def test_reasoning_under_each_name_reaches_the_template_as_in_transformers(hf, key):
    # transformers 5 fills `reasoning_content` from `reasoning` or `thinking`.
    messages = [_user("2+2?"), {"role": "assistant", "content": "4", key: "add them"}]
    ids, _ = chat.render_messages(Tokenizer.load(hf["think"]), messages)
    assert ids == _ids(_reference(hf["think"]), messages)
    assert "<think>add them</think>4" in _reference(hf["think"]).decode(ids)


# ----- masks --------------------------------------------------------------------------------
# Replies that start with whitespace: tokens may then cross into the text before them.
SPACED = {"spaced": [_user("indent"), _assistant("  two spaces first")],
          "newlines": [_user("lines"), _assistant("\n\nafter two newlines")]}


@pytest.mark.parametrize("name", ["llama3", "blocks_untrimmed"])
@pytest.mark.parametrize("conversation", sorted({**CONVERSATIONS, **SPACED}))
def test_generation_block_mask_equals_transformers(hf, name, conversation):
    messages = {**CONVERSATIONS, **SPACED}[conversation]
    tok = Tokenizer.load(hf[name])
    for generation_prompt in (False, True):
        out = _reference(hf[name]).apply_chat_template(
            messages, tokenize=True, add_generation_prompt=generation_prompt,
            return_assistant_tokens_mask=True, return_dict=True)
        ids, mask = chat.render_messages(tok, messages, generation_prompt)
        assert ids == list(out["input_ids"])
        assert mask == list(out["assistant_masks"]), generation_prompt


@pytest.mark.parametrize("name,end", [("chatml", "<|im_end|>"), ("tools", "</s>")])
@pytest.mark.parametrize("conversation", sorted(CONVERSATIONS))
def test_prefix_mask_is_each_reply_and_its_end_of_turn(hf, name, end, conversation):
    messages = CONVERSATIONS[conversation]
    reference = _reference(hf[name])
    ids, mask = chat.render_messages(Tokenizer.load(hf[name]), messages,
                                     **ROW_FIELDS.get(name, {}))
    replies = [m["content"] for m in messages if m["role"] == "assistant"]
    runs = [reference.decode(run, skip_special_tokens=False) for run in _runs(ids, mask)]
    assert runs == [r + end for r in replies]


@pytest.mark.parametrize("conversation", sorted(SPACED))
def test_a_reply_starting_with_whitespace_is_masked_not_refused(hf, conversation):
    # ChatML renders "<|im_start|>assistant\n" + reply: as text, the conversation up to the
    # reply is a prefix of the whole. GPT-2's split joins that "\n" with the reply's leading
    # whitespace into one token, so only the token ids are not a prefix.
    messages = SPACED[conversation]
    reference = _reference(hf["chatml"])
    reply = messages[-1]["content"]
    header = _ids(reference, messages[:-1], add_generation_prompt=True)
    whole = _ids(reference, messages)
    assert whole[:len(header)] != header  # the case this test is about
    ids, mask = chat.render_messages(Tokenizer.load(hf["chatml"]), messages)
    assert ids == whole
    runs = [reference.decode(run, skip_special_tokens=False) for run in _runs(ids, mask)]
    # the token shared with the header's "\n" may count as the reply's (transformers'
    # generation-block rule) or not
    assert runs in ([reply + "<|im_end|>"], ["\n" + reply + "<|im_end|>"])


# ----- render_pair --------------------------------------------------------------------------
@pytest.mark.parametrize("name,end", [("chatml", "<|im_end|>"), ("llama3", "<|eot_id|>")])
@pytest.mark.parametrize("prompt", ["What is 2+2?", [_system("Be brief."), _user("2+2?")],
                                    [_user("a"), _assistant("b"), _user("ça va? 😀")]])
def test_pair_is_the_prompt_then_the_reply(hf, name, end, prompt):
    tok = Tokenizer.load(hf[name])
    reference = _reference(hf[name])
    reply = "The answer is 4. 東京"
    pair = chat.render_pair(tok, prompt, reply)
    messages = chat.prompt_messages(prompt)
    assert pair.prompt_ids == _ids(reference, messages, add_generation_prompt=True)
    assert pair.ids == _ids(reference, messages + [_assistant(reply)])
    assert pair.ids[:len(pair.prompt_ids)] == pair.prompt_ids
    assert len(pair.mask) == len(pair.ids) and not any(pair.mask[:len(pair.prompt_ids)])
    runs = _runs(pair.ids, pair.mask)
    assert [reference.decode(r, skip_special_tokens=False) for r in runs] == [reply + end]


# ----- refusals -----------------------------------------------------------------------------
def _template_file(directory):
    return str(directory / "chat_template.jinja")


def test_a_role_the_template_refuses_names_the_row_and_template(hf):
    tok = Tokenizer.load(hf["no_system"])
    messages = [_system("x"), _user("hi"), _assistant("ho")]
    with pytest.raises(DataError, match="System role not supported") as e:
        chat.render_messages(tok, messages, where="rows.jsonl:3")
    assert "rows.jsonl:3" in str(e.value) and _template_file(hf["no_system"]) in str(e.value)
    with pytest.raises(DataError, match="rows.jsonl:4"):
        chat.render_prompt(tok, "hi", system="x", where="rows.jsonl:4")
    # the same conversation without the system turn renders as transformers does
    ids, _ = chat.render_messages(tok, messages[1:])
    assert ids == _ids(_reference(hf["no_system"]), messages[1:])


def test_a_template_that_does_not_parse_names_file_and_line(hf, tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    for f in hf["chatml"].iterdir():
        (bad / f.name).write_bytes(f.read_bytes())
    (bad / "chat_template.jinja").write_text(
        "{% for message in messages %}\n{{ message.content }}\n{% if %}\n{% endfor %}\n")
    tok = Tokenizer.load(bad)
    with pytest.raises(DataError, match="does not parse") as e:
        chat.render_messages(tok, CONVERSATIONS["single"], where="rows.jsonl:1")
    assert str(e.value).startswith(f"{bad / 'chat_template.jinja'}:3:")


# Each reaches past an unsafe attribute (which alone renders as nothing, see below).
ESCAPES = [
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "{{ messages.__class__.__base__.__subclasses__() }}",
    "{{ raise_exception.__globals__['os'] }}",
    "{{ cycler.__init__.__globals__.os.popen('echo pwned').read() }}",
    "{{ self._TemplateReference__context.parent }}",
    "{{ '{0.__class__.__mro__}'.format('') }}",
    "{{ messages.append({'role': 'user', 'content': 'injected'}) }}",
    "{{ messages[0].update({'content': 'changed'}) }}",
]


@pytest.mark.parametrize("escape", ESCAPES)
def test_a_template_cannot_leave_the_sandbox(hf, tmp_path, escape):
    tok = Tokenizer.load(hf["chatml"]).with_chat_template(
        escape + CHATML, str(tmp_path / "evil.jinja"))
    messages = [_user("hi"), _assistant("ho")]
    with pytest.raises(DataError, match="rows.jsonl:9.*unsafe") as e:  # the sandbox's refusal
        chat.render_messages(tok, messages, where="rows.jsonl:9")
    assert str(tmp_path / "evil.jinja") in str(e.value)
    assert "<class" not in str(e.value) and "pwned" not in str(e.value)
    assert messages == [_user("hi"), _assistant("ho")]


def test_an_unsafe_attribute_alone_renders_as_nothing_as_in_transformers(hf, tmp_path):
    template = "{{ raise_exception.__globals__ }}{{ ''.__class__ }}" + CHATML
    tok = Tokenizer.load(hf["chatml"]).with_chat_template(template, str(tmp_path / "t.jinja"))
    messages = [_user("hi"), _assistant("ho")]
    ids, _ = chat.render_messages(tok, messages)
    assert ids == _ids(_reference(hf["chatml"]), messages, chat_template=template)
    assert ids == chat.render_messages(Tokenizer.load(hf["chatml"]), messages)[0]


def test_reasoning_dropped_from_earlier_turns_cannot_be_masked(hf):
    tok = Tokenizer.load(hf["think"])
    messages = [_user("2+2?"), _assistant("<think>two and two</think>4"), _user("3+3?"),
                _assistant("<think>three and three</think>6")]
    with pytest.raises(DataError, match="cannot mask assistant message 1") as e:
        chat.render_messages(tok, messages, where="rows.jsonl:5")
    assert "rows.jsonl:5" in str(e.value) and _template_file(hf["think"]) in str(e.value)
    with pytest.raises(DataError, match="rows.jsonl:6"):
        chat.render_pair(tok, messages[:3], "<think>three and three</think>6",
                         where="rows.jsonl:6")


def test_a_prompt_that_is_not_a_prefix_of_prompt_and_reply_is_refused(hf):
    tok = Tokenizer.load(hf["odd_prompt"])
    with pytest.raises(DataError, match="renders the prompt differently") as e:
        chat.render_pair(tok, "2+2?", "4", where="pairs.jsonl:2")
    assert "pairs.jsonl:2" in str(e.value) and _template_file(hf["odd_prompt"]) in str(e.value)


def test_chat_without_a_template_names_the_directory_and_the_setting(hf):
    tok = Tokenizer.load(hf["no_template"])
    assert tok.chat_template is None
    with pytest.raises(DataError, match="data.chat_template") as e:
        chat.render_messages(tok, CONVERSATIONS["single"], where="rows.jsonl:1")
    assert str(hf["no_template"]) in str(e.value) and "rows.jsonl:1" in str(e.value)
    with pytest.raises(DataError, match="data.chat_template"):
        tok.require("chat", "SFT")


def test_a_tokenizer_without_eos_names_its_directory(hf):
    tok = Tokenizer.load(hf["no_eos"])
    assert tok.eos_id == -1 and tok.eos_ids == ()
    with pytest.raises(DataError, match="end-of-sequence") as e:
        tok.require("eos", "SFT")
    assert str(hf["no_eos"]) in str(e.value) and "SFT" in str(e.value)
    Tokenizer.load(hf["chatml"]).require("eos", "SFT")  # one with EOS passes


# ----- prepare() with data.chat_template ------------------------------------------------------
PREPARE_ROWS = [
    {"messages": [_user("What is the capital of France?"), _assistant("Paris.")]},
    {"messages": [_system("Answer briefly."), _user("2+2?"), _assistant("4")]},
    {"messages": [_user("hi"), _assistant("Hello! How can I help?"), _user("explain add"),
                  _assistant("It adds two numbers.")]},
    {"messages": [_user("Grüße aus Köln — 東京 😀"), _assistant("ça va? 😀")]},
    {"messages": [_user("Weather in Köln?"), _assistant("Sunny.")], "tools": [WEATHER]},
]


def _chat_config(raw, out, **kw):
    return _config(raw, out, **{"dedup.near": False, "decontaminate.enabled": False, **kw})


@pytest.fixture
def chat_rows(tmp_path):
    raw = tmp_path / "chat.jsonl"
    raw.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in PREPARE_ROWS))
    return raw


def test_prepare_with_a_template_file_keeps_the_hf_files_and_renders_like_transformers(
        hf, tmp_path, chat_rows):
    template = tmp_path / "llama3.jinja"
    template.write_text(LLAMA3)
    source = hf["chatml"]  # its own template is ChatML; the file overrides it
    out = prepare(_chat_config(chat_rows, tmp_path / "out", **{
        "tokenizer.path": str(source), "chat_template": str(template)}))
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        assert (out / "tokenizer" / name).read_bytes() == (source / name).read_bytes(), name
    ours = json.loads((out / "tokenizer" / "llm_tokenizer.json").read_text())
    assert ours["chat_template_override"] == LLAMA3
    tok = Tokenizer.load(out / "tokenizer")
    assert tok.chat_template == LLAMA3 and tok.chat_template_source == str(template)

    reference = _reference(source)
    expected = []
    for row in PREPARE_ROWS:
        got = reference.apply_chat_template(
            row["messages"], tools=row.get("tools"), chat_template=LLAMA3, tokenize=True,
            return_assistant_tokens_mask=True, return_dict=True)
        expected.append((list(got["input_ids"]), list(got["assistant_masks"])))
    meta = json.loads((out / "meta.json").read_text())
    records = RecordSet(out, "train", "sft", meta["dtype"])
    written = [(records.tokens(i).tolist(), records.mask(i).tolist())
               for i in range(len(records))]
    assert sorted(written) == sorted(expected)


def test_prepare_refuses_a_missing_template_file_before_writing(hf, tmp_path, chat_rows):
    missing = tmp_path / "nowhere.jinja"
    with pytest.raises(DataError, match="data.chat_template: no such file") as e:
        prepare(_chat_config(chat_rows, tmp_path / "out", **{
            "tokenizer.path": str(hf["chatml"]), "chat_template": str(missing)}))
    assert str(missing) in str(e.value)
    assert not (tmp_path / "out").exists()


def test_prepare_refuses_a_template_that_does_not_parse_before_writing(hf, tmp_path,
                                                                       chat_rows):
    bad = tmp_path / "bad.jinja"
    bad.write_text("{% for message in messages %}\n{{ message.content }\n{% endfor %}\n")
    with pytest.raises(DataError, match="does not parse") as e:
        prepare(_chat_config(chat_rows, tmp_path / "out", **{
            "tokenizer.path": str(hf["chatml"]), "chat_template": str(bad)}))
    assert str(e.value).startswith(f"{bad}:2:")
    assert not (tmp_path / "out").exists()


def test_prepare_refuses_chat_rows_for_a_tokenizer_without_a_template(hf, tmp_path,
                                                                      chat_rows):
    with pytest.raises(DataError, match="data.chat_template") as e:
        prepare(_chat_config(chat_rows, tmp_path / "out",
                             **{"tokenizer.path": str(hf["no_template"])}))
    assert str(hf["no_template"]) in str(e.value)


def test_prepare_takes_the_template_file_for_a_tokenizer_without_one(hf, tmp_path, chat_rows):
    template = tmp_path / "qwen.jinja"
    template.write_text(QWEN_TOOLS)
    out = prepare(_chat_config(chat_rows, tmp_path / "out", **{
        "tokenizer.path": str(hf["no_template"]), "chat_template": str(template)}))
    assert not (out / "tokenizer" / "chat_template.jinja").exists()
    reference = _reference(hf["no_template"])
    meta = json.loads((out / "meta.json").read_text())
    records = RecordSet(out, "train", "sft", meta["dtype"])
    written = sorted(records.tokens(i).tolist() for i in range(len(records)))
    # a row's `tools` field reaches the template as apply_chat_template(tools=...)
    expected = [_ids(reference, r["messages"], tools=r.get("tools"), chat_template=QWEN_TOOLS)
                for r in PREPARE_ROWS]
    assert written == sorted(expected)
    assert any("get_weather" in reference.decode(ids) for ids in written)
