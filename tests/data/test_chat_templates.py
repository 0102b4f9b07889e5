"""Assistant-only targets under published chat templates, on the byte tokenizer built in code (nothing downloaded).

The templates are copied verbatim from the model repositories named with each (their `chat_template`; TRL keeps
byte-identical copies in `trl/chat_templates/` and checks them against the Hub weekly). The reference is written by
hand from the conversation: one run of consecutive targets per non-empty reply, holding the reply's content as the
template renders it (Llama and Gemma trim it) and that turn's end-of-turn marker, and no other target: no BOS, role
header, inserted system block, or newline after the marker.
"""

from itertools import groupby

import pytest

from longalign_hf.data.chat import ConversationError, tokenize_conversation
from longalign_hf.tiny import build_byte_tokenizer

# Qwen/Qwen2.5-7B-Instruct: ChatML; inserts its default system prompt when the conversation has none.
QWEN2_5 = r"""{%- if tools %}
    {{- '<|im_start|>system\n' }}
    {%- if messages[0]['role'] == 'system' %}
        {{- messages[0]['content'] }}
    {%- else %}
        {{- 'You are Qwen, created by Alibaba Cloud. You are a helpful assistant.' }}
    {%- endif %}
    {{- "\n\n# Tools\n\nYou may call one or more functions to assist with the user query.\n\nYou are provided with function signatures within <tools></tools> XML tags:\n<tools>" }}
    {%- for tool in tools %}
        {{- "\n" }}
        {{- tool | tojson }}
    {%- endfor %}
    {{- "\n</tools>\n\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n{\"name\": <function-name>, \"arguments\": <args-json-object>}\n</tool_call><|im_end|>\n" }}
{%- else %}
    {%- if messages[0]['role'] == 'system' %}
        {{- '<|im_start|>system\n' + messages[0]['content'] + '<|im_end|>\n' }}
    {%- else %}
        {{- '<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n' }}
    {%- endif %}
{%- endif %}
{%- for message in messages %}
    {%- if (message.role == "user") or (message.role == "system" and not loop.first) or (message.role == "assistant" and not message.tool_calls) %}
        {{- '<|im_start|>' + message.role + '\n' + message.content + '<|im_end|>' + '\n' }}
    {%- elif message.role == "assistant" %}
        {{- '<|im_start|>' + message.role }}
        {%- if message.content %}
            {{- '\n' + message.content }}
        {%- endif %}
        {%- for tool_call in message.tool_calls %}
            {%- if tool_call.function is defined %}
                {%- set tool_call = tool_call.function %}
            {%- endif %}
            {{- '\n<tool_call>\n{"name": "' }}
            {{- tool_call.name }}
            {{- '", "arguments": ' }}
            {{- tool_call.arguments | tojson }}
            {{- '}\n</tool_call>' }}
        {%- endfor %}
        {{- '<|im_end|>\n' }}
    {%- elif message.role == "tool" %}
        {%- if (loop.index0 == 0) or (messages[loop.index0 - 1].role != "tool") %}
            {{- '<|im_start|>user' }}
        {%- endif %}
        {{- '\n<tool_response>\n' }}
        {{- message.content }}
        {{- '\n</tool_response>' }}
        {%- if loop.last or (messages[loop.index0 + 1].role != "tool") %}
            {{- '<|im_end|>\n' }}
        {%- endif %}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\n' }}
{%- endif %}
"""

# meta-llama/Llama-3.1-8B-Instruct: always opens with a system block ("Cutting Knowledge Date: ..."), trims content.
LLAMA3_1 = r"""{{- bos_token }}
{%- if custom_tools is defined %}
    {%- set tools = custom_tools %}
{%- endif %}
{%- if not tools_in_user_message is defined %}
    {%- set tools_in_user_message = true %}
{%- endif %}
{%- if not date_string is defined %}
    {%- set date_string = "26 Jul 2024" %}
{%- endif %}
{%- if not tools is defined %}
    {%- set tools = none %}
{%- endif %}

{#- This block extracts the system message, so we can slot it into the right place. #}
{%- if messages[0]['role'] == 'system' %}
    {%- set system_message = messages[0]['content']|trim %}
    {%- set messages = messages[1:] %}
{%- else %}
    {%- set system_message = "" %}
{%- endif %}

{#- System message + builtin tools #}
{{- "<|start_header_id|>system<|end_header_id|>\n\n" }}
{%- if builtin_tools is defined or tools is not none %}
    {{- "Environment: ipython\n" }}
{%- endif %}
{%- if builtin_tools is defined %}
    {{- "Tools: " + builtin_tools | reject('equalto', 'code_interpreter') | join(", ") + "\n\n"}}
{%- endif %}
{{- "Cutting Knowledge Date: December 2023\n" }}
{{- "Today Date: " + date_string + "\n\n" }}
{%- if tools is not none and not tools_in_user_message %}
    {{- "You have access to the following functions. To call a function, please respond with JSON for a function call." }}
    {{- 'Respond in the format {"name": function name, "parameters": dictionary of argument name and its value}.' }}
    {{- "Do not use variables.\n\n" }}
    {%- for t in tools %}
        {{- t | tojson(indent=4) }}
        {{- "\n\n" }}
    {%- endfor %}
{%- endif %}
{{- system_message }}
{{- "<|eot_id|>" }}

{#- Custom tools are passed in a user message with some extra guidance #}
{%- if tools_in_user_message and not tools is none %}
    {#- Extract the first user message so we can plug it in here #}
    {%- if messages | length != 0 %}
        {%- set first_user_message = messages[0]['content']|trim %}
        {%- set messages = messages[1:] %}
    {%- else %}
        {{- raise_exception("Cannot put tools in the first user message when there's no first user message!") }}
{%- endif %}
    {{- '<|start_header_id|>user<|end_header_id|>\n\n' -}}
    {{- "Given the following functions, please respond with a JSON for a function call " }}
    {{- "with its proper arguments that best answers the given prompt.\n\n" }}
    {{- 'Respond in the format {"name": function name, "parameters": dictionary of argument name and its value}.' }}
    {{- "Do not use variables.\n\n" }}
    {%- for t in tools %}
        {{- t | tojson(indent=4) }}
        {{- "\n\n" }}
    {%- endfor %}
    {{- first_user_message + "<|eot_id|>"}}
{%- endif %}

{%- for message in messages %}
    {%- if not (message.role == 'ipython' or message.role == 'tool' or 'tool_calls' in message) %}
        {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' }}
    {%- elif 'tool_calls' in message %}
        {%- if not message.tool_calls|length == 1 %}
            {{- raise_exception("This model only supports single tool-calls at once!") }}
        {%- endif %}
        {%- set tool_call = message.tool_calls[0].function %}
        {%- if builtin_tools is defined and tool_call.name in builtin_tools %}
            {{- '<|start_header_id|>assistant<|end_header_id|>\n\n' -}}
            {{- "<|python_tag|>" + tool_call.name + ".call(" }}
            {%- for arg_name, arg_val in tool_call.arguments | items %}
                {{- arg_name + '="' + arg_val + '"' }}
                {%- if not loop.last %}
                    {{- ", " }}
                {%- endif %}
                {%- endfor %}
            {{- ")" }}
        {%- else  %}
            {{- '<|start_header_id|>assistant<|end_header_id|>\n\n' -}}
            {{- '{"name": "' + tool_call.name + '", ' }}
            {{- '"parameters": ' }}
            {{- tool_call.arguments | tojson }}
            {{- "}" }}
        {%- endif %}
        {%- if builtin_tools is defined %}
            {#- This means we're in ipython mode #}
            {{- "<|eom_id|>" }}
        {%- else %}
            {{- "<|eot_id|>" }}
        {%- endif %}
    {%- elif message.role == "tool" or message.role == "ipython" %}
        {{- "<|start_header_id|>ipython<|end_header_id|>\n\n" }}
        {%- if message.content is mapping or message.content is iterable %}
            {{- message.content | tojson }}
        {%- else %}
            {{- message.content }}
        {%- endif %}
        {{- "<|eot_id|>" }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|start_header_id|>assistant<|end_header_id|>\n\n' }}
{%- endif %}
"""

# google/gemma-2-9b-it (Gemma 1 ships the same): no system role and user/model turns must alternate (it raises
# otherwise), trims content.
GEMMA = r"""{{ bos_token }}{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}{% if (message['role'] == 'assistant') %}{% set role = 'model' %}{% else %}{% set role = message['role'] %}{% endif %}{{ '<start_of_turn>' + role + '
' + message['content'] | trim + '<end_of_turn>
' }}{% endfor %}{% if add_generation_prompt %}{{'<start_of_turn>model
'}}{% endif %}"""

# meta-llama/Meta-Llama-3-8B-Instruct, and TRL's training variant of it (`trl/chat_templates/llama3_training.jinja`),
# which only adds `{% generation %}` markers around each reply and its end-of-turn.
LLAMA3 = r"""{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>

'+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>

' }}{% endif %}"""

LLAMA3_GENERATION = r"""{#- Training variant of the Llama 3 chat template (see llama3.jinja for the original).
    Modifications vs the original:
    - Added {% generation %} / {% endgeneration %} around assistant message output to support
      assistant-only loss masking in SFT training.
-#}
{%- for message in messages %}
    {%- if loop.index0 == 0 %}{{- bos_token }}{%- endif %}
    {%- if message['role'] == 'assistant' %}
        {{- '<|start_header_id|>assistant<|end_header_id|>\n\n' }}
        {%- generation %}
        {{- message['content'] | trim + '<|eot_id|>' }}
        {%- endgeneration %}
    {%- else %}
        {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' + message['content'] | trim + '<|eot_id|>' }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|start_header_id|>assistant<|end_header_id|>\n\n' }}
{%- endif %}
"""

LLAMA3_TOKENS = ["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]
# name: (template, special tokens it uses, end-of-turn marker, whether it trims the content)
TEMPLATES = {
    "qwen2.5": (QWEN2_5, ["<|im_start|>", "<|im_end|>"], "<|im_end|>", False),
    "llama3.1": (LLAMA3_1, LLAMA3_TOKENS, "<|eot_id|>", True),
    "gemma": (GEMMA, ["<start_of_turn>", "<end_of_turn>"], "<end_of_turn>", True),
}
# What a template refuses, with the words of its own error.
REFUSED = {("gemma", "system first"): "System role not supported", ("gemma", "assistant first"): "must alternate"}

CONVERSATIONS = {
    "user first": [
        {"role": "user", "content": "Say the role name."},
        # Also the text of the role header, so finding the reply by searching for its text would hit the header.
        {"role": "assistant", "content": "assistant"},
        {"role": "user", "content": "héllo 你好"},
        {"role": "assistant", "content": "  你 there \n"},
    ],
    "system first": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello"},
    ],
    "assistant first": [
        {"role": "assistant", "content": "How can I help?"},
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello"},
    ],
}


def _chat_tokenizer(template, special_tokens, register):
    tokenizer = build_byte_tokenizer()
    tokenizer.chat_template = template
    if register:
        tokenizer.add_tokens(special_tokens, special_tokens=True)
    return tokenizer


def _target_runs(tokenizer, sample):
    """The decoded text of each run of consecutive target tokens."""
    assert all(label in (-100, token) for token, label in zip(sample["input_ids"], sample["labels"]))
    runs = groupby(sample["labels"], key=lambda label: label != -100)
    return [tokenizer.decode(list(run)) for is_target, run in runs if is_target]


def _expected_runs(messages, end_of_turn, trims):
    replies = [turn["content"] for turn in messages if turn["role"] == "assistant" and turn["content"].strip()]
    return [(reply.strip() if trims else reply) + end_of_turn for reply in replies]


@pytest.mark.parametrize("register", [True, False], ids=["special tokens", "bytes only"])
@pytest.mark.parametrize("conversation", CONVERSATIONS)
@pytest.mark.parametrize("name", TEMPLATES)
def test_targets_are_the_replies_and_their_end_of_turn(name, conversation, register):
    template, special_tokens, end_of_turn, trims = TEMPLATES[name]
    tokenizer = _chat_tokenizer(template, special_tokens, register)
    messages = CONVERSATIONS[conversation]
    if (name, conversation) in REFUSED:
        with pytest.raises(ConversationError, match=REFUSED[name, conversation]):
            tokenize_conversation(messages, tokenizer)
        return
    sample = tokenize_conversation(messages, tokenizer)
    text = tokenizer.apply_chat_template(messages, tokenize=False)
    assert sample["input_ids"] == tokenizer(text, add_special_tokens=False)["input_ids"]
    assert _target_runs(tokenizer, sample) == _expected_runs(messages, end_of_turn, trims)


@pytest.mark.parametrize("name", TEMPLATES)
def test_empty_replies_have_no_target(name):
    template, special_tokens, end_of_turn, trims = TEMPLATES[name]
    tokenizer = _chat_tokenizer(template, special_tokens, register=True)
    messages = [
        {"role": "user", "content": "a"},
        {"role": "assistant", "content": ""},
        {"role": "user", "content": "b"},
        {"role": "assistant", "content": " \n "},
        {"role": "user", "content": "c"},
        {"role": "assistant", "content": "fine"},
    ]
    sample = tokenize_conversation(messages, tokenizer)
    assert _target_runs(tokenizer, sample) == ["fine" + end_of_turn]
    assert sample["empty_turns"] == 2


@pytest.mark.parametrize("conversation", CONVERSATIONS)
def test_llama3_targets_match_the_generation_markers_of_its_training_template(conversation):
    # Independent reference: transformers' own `{% generation %}` mask, from TRL's marked copy of the same template.
    messages = CONVERSATIONS[conversation]
    tokenizer = _chat_tokenizer(LLAMA3_GENERATION, LLAMA3_TOKENS, register=True)
    reference = tokenizer.apply_chat_template(
        messages, tokenize=True, return_dict=True, return_assistant_tokens_mask=True
    )
    tokenizer.chat_template = LLAMA3
    sample = tokenize_conversation(messages, tokenizer)
    assert sample["input_ids"] == reference["input_ids"]
    assert [int(label != -100) for label in sample["labels"]] == reference["assistant_masks"]
