import pytest
from tokenizers import models, pre_tokenizers

from longalign_hf.data.chat import ConversationError, assistant_char_spans, tokenize_conversation
from longalign_hf.tiny import build_byte_tokenizer

CONVERSATIONS = [
    [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello there"}],
    [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "héllo 你好"},
        {"role": "assistant", "content": "hi 你 there\n"},
        {"role": "user", "content": "again"},
        {"role": "assistant", "content": "  ok  "},
    ],
    [{"role": "user", "content": ""}, {"role": "assistant", "content": "x"}],
    # Starting with a reply: the BOS and the role header before it are not targets.
    [
        {"role": "assistant", "content": "How can I help?"},
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello"},
    ],
    [{"role": "system", "content": "s"}, {"role": "assistant", "content": "first"}],
]

CHATML = (
    "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


@pytest.mark.parametrize("messages", CONVERSATIONS)
def test_targets_are_exactly_the_assistant_tokens(tokenizer, messages):
    # Independent reference: the template's {% generation %} markers, read by transformers itself.
    reference = tokenizer.apply_chat_template(
        messages, tokenize=True, return_dict=True, return_assistant_tokens_mask=True
    )
    sample = tokenize_conversation(messages, tokenizer)
    assert sample["input_ids"] == reference["input_ids"]
    assert [int(label != -100) for label in sample["labels"]] == reference["assistant_masks"]
    assert all(label in (-100, token) for label, token in zip(sample["labels"], sample["input_ids"]))


def test_template_without_generation_markers():
    chatml = build_byte_tokenizer()
    chatml.chat_template = CHATML
    messages = CONVERSATIONS[1]
    sample = tokenize_conversation(messages, chatml)
    targets = chatml.decode([label for label in sample["labels"] if label != -100])
    # Each reply and its end-of-turn marker, nothing of the prompts, not the newline after <|im_end|>.
    assert targets == "hi 你 there\n<|im_end|>  ok  <|im_end|>"


def test_spans_reject_templates_that_rewrite_history():
    rewriting = build_byte_tokenizer()
    # Shows only the last assistant turn in full: earlier replies are rendered differently later on.
    rewriting.chat_template = (
        "{% for m in messages %}{% if m['role'] == 'assistant' and not loop.last %}[old]"
        "{% else %}{{ m['role'] + ':' + m['content'] + '|' }}{% endif %}{% endfor %}"
        "{% if add_generation_prompt %}assistant:{% endif %}"
    )
    with pytest.raises(ConversationError, match="prefix"):
        assistant_char_spans(rewriting, CONVERSATIONS[1])


# Renders " " + content after "[/INST]", as Mixtral-8x7B-Instruct's template did; the marked copy is the reference.
SPACED_REPLIES = (
    "{{ bos_token }}{% for message in messages %}{% if message['role'] == 'user' %}"
    "{{ '[INST] ' + message['content'] + ' [/INST]' }}{% else %}{{ ' ' }}"
    "{% generation %}{{ message['content'] + eos_token }}{% endgeneration %}{% endif %}{% endfor %}"
)


def test_a_token_across_the_start_of_a_reply_is_a_target():
    tokenizer = build_byte_tokenizer()
    # One merge, " H": the reply's first token starts with the space the template puts before the content.
    vocab = {symbol: index for index, symbol in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    vocab["ĠH"] = len(tokenizer)
    tokenizer.backend_tokenizer.model = models.BPE(vocab=vocab, merges=[("Ġ", "H")])
    tokenizer.chat_template = SPACED_REPLIES
    messages = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]
    reference = tokenizer.apply_chat_template(
        messages, tokenize=True, return_dict=True, return_assistant_tokens_mask=True
    )
    tokenizer.chat_template = SPACED_REPLIES.replace("{% generation %}", "").replace("{% endgeneration %}", "")
    sample = tokenize_conversation(messages, tokenizer)
    assert sample["input_ids"] == reference["input_ids"]
    assert [int(label != -100) for label in sample["labels"]] == reference["assistant_masks"]
    assert tokenizer.decode([label for label in sample["labels"] if label != -100]) == " Hello<|end|>"


@pytest.mark.parametrize(
    "reply",
    [
        "{{ message['content'] | upper }}",  # the content is changed: where it starts cannot be found
        "{% if message['content'] | length > 30 %}[long] {% endif %}{{ message['content'] }}",  # the header depends on it
    ],
)
def test_spans_refuse_templates_where_the_reply_cannot_be_located(reply):
    tokenizer = build_byte_tokenizer()
    tokenizer.chat_template = (
        "{% for message in messages %}{{ message['role'] + ': ' }}"
        "{% if message['role'] == 'assistant' %}" + reply + "{% else %}{{ message['content'] }}{% endif %}"
        "{{ '<|end|>' }}{% endfor %}{% if add_generation_prompt %}{{ 'assistant: ' }}{% endif %}"
    )
    messages = [
        {"role": "user", "content": "q"},
        {"role": "assistant", "content": "an answer of over thirty characters"},
    ]
    with pytest.raises(ConversationError, match="cannot tell where the content of assistant turn 1 starts"):
        tokenize_conversation(messages, tokenizer)


def test_template_errors_are_conversation_errors():
    tokenizer = build_byte_tokenizer()
    tokenizer.chat_template = "{{ raise_exception('System role not supported') }}"
    with pytest.raises(ConversationError, match="the chat template refuses this conversation: System role not"):
        tokenize_conversation([{"role": "assistant", "content": "x"}], tokenizer)


def test_truncation_policy(tokenizer):
    messages = [{"role": "user", "content": "a" * 50}, {"role": "assistant", "content": "b" * 50}]
    full = tokenize_conversation(messages, tokenizer)
    cut = tokenize_conversation(messages, tokenizer, max_length=70)
    assert cut["truncated"] == 1 and full["truncated"] == 0
    assert cut["input_ids"] == full["input_ids"][:70] and cut["labels"] == full["labels"][:70]
    with pytest.raises(ConversationError, match="over max_length=70"):
        tokenize_conversation(messages, tokenizer, max_length=70, overflow="drop")


@pytest.mark.parametrize(
    ("messages", "match"),
    [
        ([], "non-empty list"),
        ("hello", "non-empty list"),
        ([{"role": "user"}], "turn 0 must be a dict with `role` and `content`"),
        ([{"role": "tool", "content": "x"}, {"role": "assistant", "content": "y"}], "turn 0 has role 'tool'"),
        ([{"role": "user", "content": "x"}], "no assistant turn"),
        ([{"role": "user", "content": 3}, {"role": "assistant", "content": "y"}], "content must be a string"),
    ],
)
def test_bad_conversations(tokenizer, messages, match):
    with pytest.raises(ConversationError, match=match):
        tokenize_conversation(messages, tokenizer)
