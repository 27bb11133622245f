#!/usr/bin/env python3
"""make_jinja_fixtures.py - expected chat-template renders from Python jinja2.

codi renders tokenizer.chat_template with its own small Jinja interpreter
(src/jinja.c). This script renders the same templates with the same messages
using jinja2 configured exactly as Hugging Face transformers configures it
for chat templates (ImmutableSandboxedEnvironment, trim_blocks=True,
lstrip_blocks=True, the loopcontrols extension, raise_exception and a tojson
filter with ensure_ascii=False), and writes what jinja2 produced - or that it
raised - into tests/fixtures/jinja/cases.txt. tests/test_jinja.c checks that
codi produces the same bytes (or an error).

    python3 tools/make_jinja_fixtures.py      (needs jinja2: pip install jinja2;
                                               bench/.peer/venv has it)

Format: '#' comment lines; then per case
    case <name>
    tmpl <hex of template bytes>
    bos <hex>            eos <hex>
    gen 0|1              (add_generation_prompt)
    msg <hex role> <hex content>     (zero or more)
    out <hex of rendered text>   or   err <hex of jinja2's message>
    end
Templates: real ones from model families codi runs or that are common (Gemma
3, Qwen2.5, Qwen3, SmolLM2/ChatML, Llama 3, Llama 2/Mistral variants, Phi-3,
Zephyr), and small ones that exercise one Jinja feature each.
"""

import json
import os
import sys

import jinja2
import jinja2.ext
from jinja2.sandbox import ImmutableSandboxedEnvironment

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "tests", "fixtures", "jinja", "cases.txt")


def raise_exception(message):
    raise jinja2.exceptions.TemplateError(message)


def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def env():
    e = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                      extensions=[jinja2.ext.loopcontrols])
    e.filters["tojson"] = tojson
    e.globals["raise_exception"] = raise_exception
    return e


GEMMA3 = """{{ bos_token }}
{%- if messages[0]['role'] == 'system' -%}
    {%- if messages[0]['content'] is string -%}
        {%- set first_user_prefix = messages[0]['content'] + '\n\n' -%}
    {%- else -%}
        {%- set first_user_prefix = messages[0]['content'][0]['text'] + '\n\n' -%}
    {%- endif -%}
    {%- set loop_messages = messages[1:] -%}
{%- else -%}
    {%- set first_user_prefix = "" -%}
    {%- set loop_messages = messages -%}
{%- endif -%}
{%- for message in loop_messages -%}
    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}
        {{ raise_exception("Conversation roles must alternate user/assistant/user/assistant/...") }}
    {%- endif -%}
    {%- if (message['role'] == 'assistant') -%}
        {%- set role = "model" -%}
    {%- else -%}
        {%- set role = message['role'] -%}
    {%- endif -%}
    {{ '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else "") }}
    {%- if message['content'] is string -%}
        {{ message['content'] | trim }}
    {%- elif message['content'] is iterable -%}
        {%- for item in message['content'] -%}
            {%- if item['type'] == 'image' -%}
                {{ '<start_of_image>' }}
            {%- elif item['type'] == 'text' -%}
                {{ item['text'] | trim }}
            {%- endif -%}
        {%- endfor -%}
    {%- else -%}
        {{ raise_exception("Invalid content type") }}
    {%- endif -%}
    {{ '<end_of_turn>\n' }}
{%- endfor -%}
{%- if add_generation_prompt -%}
    {{'<start_of_turn>model\n'}}
{%- endif -%}
"""

QWEN25 = """{%- if tools %}
    {{- '<|im_start|>system\\n' }}
    {%- if messages[0]['role'] == 'system' %}
        {{- messages[0]['content'] }}
    {%- else %}
        {{- 'You are Qwen, created by Alibaba Cloud. You are a helpful assistant.' }}
    {%- endif %}
    {{- "\\n\\n# Tools\\n\\nYou may call one or more functions to assist with the user query.\\n\\nYou are provided with function signatures within <tools></tools> XML tags:\\n<tools>" }}
    {%- for tool in tools %}
        {{- "\\n" }}
        {{- tool | tojson }}
    {%- endfor %}
    {{- "\\n</tools>\\n\\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\\n<tool_call>\\n{\\"name\\": <function-name>, \\"arguments\\": <args-json-object>}\\n</tool_call><|im_end|>\\n" }}
{%- else %}
    {%- if messages[0]['role'] == 'system' %}
        {{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}
    {%- else %}
        {{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\\n' }}
    {%- endif %}
{%- endif %}
{%- for message in messages %}
    {%- if (message.role == "user") or (message.role == "system" and not loop.first) or (message.role == "assistant" and not message.tool_calls) %}
        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}
    {%- elif message.role == "assistant" %}
        {{- '<|im_start|>' + message.role }}
        {%- if message.content %}
            {{- '\\n' + message.content }}
        {%- endif %}
        {%- for tool_call in message.tool_calls %}
            {%- if tool_call.function is defined %}
                {%- set tool_call = tool_call.function %}
            {%- endif %}
            {{- '\\n<tool_call>\\n{"name": "' }}
            {{- tool_call.name }}
            {{- '", "arguments": ' }}
            {{- tool_call.arguments | tojson }}
            {{- '}\\n</tool_call>' }}
        {%- endfor %}
        {{- '<|im_end|>\\n' }}
    {%- elif message.role == "tool" %}
        {%- if (loop.index0 == 0) or (messages[loop.index0 - 1].role != "tool") %}
            {{- '<|im_start|>user' }}
        {%- endif %}
        {{- '\\n<tool_response>\\n' }}
        {{- message.content }}
        {{- '\\n</tool_response>' }}
        {%- if loop.last or (messages[loop.index0 + 1].role != "tool") %}
            {{- '<|im_end|>\\n' }}
        {%- endif %}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\\n' }}
{%- endif %}
"""

QWEN3 = """{%- if tools %}
    {{- '<|im_start|>system\\n' }}
    {%- if messages[0].role == 'system' %}
        {{- messages[0].content + '\\n\\n' }}
    {%- endif %}
    {{- "# Tools\\n\\nYou may call one or more functions to assist with the user query.\\n\\nYou are provided with function signatures within <tools></tools> XML tags:\\n<tools>" }}
    {%- for tool in tools %}
        {{- "\\n" }}
        {{- tool | tojson }}
    {%- endfor %}
    {{- "\\n</tools><|im_end|>\\n" }}
{%- else %}
    {%- if messages[0].role == 'system' %}
        {{- '<|im_start|>system\\n' + messages[0].content + '<|im_end|>\\n' }}
    {%- endif %}
{%- endif %}
{%- set ns = namespace(multi_step_tool=true, last_query_index=messages|length - 1) %}
{%- for message in messages[::-1] %}
    {%- set index = (messages|length - 1) - loop.index0 %}
    {%- if ns.multi_step_tool and message.role == "user" and message.content is string and not(message.content.startswith('<tool_response>') and message.content.endswith('</tool_response>')) %}
        {%- set ns.multi_step_tool = false %}
        {%- set ns.last_query_index = index %}
    {%- endif %}
{%- endfor %}
{%- for message in messages %}
    {%- if message.content is string %}
        {%- set content = message.content %}
    {%- else %}
        {%- set content = '' %}
    {%- endif %}
    {%- if (message.role == "user") or (message.role == "system" and not loop.first) %}
        {{- '<|im_start|>' + message.role + '\\n' + content + '<|im_end|>' + '\\n' }}
    {%- elif message.role == "assistant" %}
        {%- set reasoning_content = '' %}
        {%- if message.reasoning_content is string %}
            {%- set reasoning_content = message.reasoning_content %}
        {%- else %}
            {%- if '</think>' in content %}
                {%- set reasoning_content = content.split('</think>')[0].rstrip('\\n').split('<think>')[-1].lstrip('\\n') %}
                {%- set content = content.split('</think>')[-1].lstrip('\\n') %}
            {%- endif %}
        {%- endif %}
        {%- if loop.index0 > ns.last_query_index %}
            {%- if loop.last or (not loop.last and reasoning_content) %}
                {{- '<|im_start|>' + message.role + '\\n<think>\\n' + reasoning_content.strip('\\n') + '\\n</think>\\n\\n' + content.lstrip('\\n') }}
            {%- else %}
                {{- '<|im_start|>' + message.role + '\\n' + content }}
            {%- endif %}
        {%- else %}
            {{- '<|im_start|>' + message.role + '\\n' + content }}
        {%- endif %}
        {{- '<|im_end|>\\n' }}
    {%- elif message.role == "tool" %}
        {%- if loop.first or (messages[loop.index0 - 1].role != "tool") %}
            {{- '<|im_start|>user' }}
        {%- endif %}
        {{- '\\n<tool_response>\\n' }}
        {{- content }}
        {{- '\\n</tool_response>' }}
        {%- if loop.last or (messages[loop.index0 + 1].role != "tool") %}
            {{- '<|im_end|>\\n' }}
        {%- endif %}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\\n' }}
    {%- if enable_thinking is defined and enable_thinking is false %}
        {{- '<think>\\n\\n</think>\\n\\n' }}
    {%- endif %}
{%- endif %}"""

SMOLLM2 = ("{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
           "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}"
           "{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
           "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")

LLAMA3 = ("{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = "
          "'<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + "
          "'<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}"
          "{{ content }}{% endfor %}{% if add_generation_prompt %}"
          "{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}")

LLAMA31 = """{{- bos_token }}
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
{{- "<|start_header_id|>system<|end_header_id|>\\n\\n" }}
{%- if builtin_tools is defined or tools is not none %}
    {{- "Environment: ipython\\n" }}
{%- endif %}
{{- "Cutting Knowledge Date: December 2023\\n" }}
{{- "Today Date: " + date_string + "\\n\\n" }}
{{- system_message }}
{{- "<|eot_id|>" }}

{%- for message in messages %}
    {%- if not (message.role == 'ipython' or message.role == 'tool' or 'tool_calls' in message) %}
        {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'+ message['content'] | trim + '<|eot_id|>' }}
    {%- elif 'tool_calls' in message %}
        {{- raise_exception("tool calls are not part of this test") }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}
{%- endif %}
"""

MISTRAL_V02 = ("{{ bos_token }}{% for message in messages %}{% if (message['role'] == 'user') != "
               "(loop.index0 % 2 == 0) %}{{ raise_exception('Conversation roles must alternate "
               "user/assistant/user/assistant/...') }}{% endif %}{% if message['role'] == 'user' %}"
               "{{ '[INST] ' + message['content'] + ' [/INST]' }}{% elif message['role'] == 'assistant' %}"
               "{{ message['content'] + eos_token}}{% else %}{{ raise_exception('Only user and assistant "
               "roles are supported!') }}{% endif %}{% endfor %}")

LLAMA2 = ("{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}{% set "
          "system_message = messages[0]['content'] %}{% else %}{% set loop_messages = messages %}{% set "
          "system_message = false %}{% endif %}{% for message in loop_messages %}{% if (message['role'] == "
          "'user') != (loop.index0 % 2 == 0) %}{{ raise_exception('Conversation roles must alternate "
          "user/assistant/user/assistant/...') }}{% endif %}{% if loop.index0 == 0 and system_message != "
          "false %}{% set content = '<<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n' + message['content'] "
          "%}{% else %}{% set content = message['content'] %}{% endif %}{% if message['role'] == 'user' %}"
          "{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}{% elif message['role'] == 'assistant' %}"
          "{{ ' '  + content.strip() + ' ' + eos_token }}{% endif %}{% endfor %}")

FUSIONNET = ("{%- for idx in range(0, messages|length) -%}\n{%- if messages[idx]['role'] == 'user' -%}\n"
             "{%- if idx > 1 -%}\n{{- bos_token + '[INST] ' + messages[idx]['content'] + ' [/INST]' -}}\n"
             "{%- else -%}\n{{- messages[idx]['content'] + ' [/INST]' -}}\n{%- endif -%}\n{% elif "
             "messages[idx]['role'] == 'system' %}\n{{- '[INST] <<SYS>>\\n' + messages[idx]['content'] + "
             "'\\n<</SYS>>\\n\\n' -}}\n{%- elif messages[idx]['role'] == 'assistant' -%}\n{{- ' '  + "
             "messages[idx]['content'] + ' ' + eos_token -}}\n{% endif %}\n{% endfor %}")

PHI3 = ("{{ bos_token }}{% for message in messages %}{% if (message['role'] == 'user') %}{{'<|user|>' + '\n' + "
        "message['content'] + '<|end|>' + '\n' + '<|assistant|>' + '\n'}}{% elif (message['role'] == "
        "'assistant') %}{{message['content'] + '<|end|>' + '\n'}}{% endif %}{% endfor %}")

ZEPHYR = ("{% for message in messages %}\n{% if message['role'] == 'user' %}\n{{ '<|user|>\n' + "
          "message['content'] + eos_token }}\n{% elif message['role'] == 'system' %}\n{{ '<|system|>\n' + "
          "message['content'] + eos_token }}\n{% elif message['role'] == 'assistant' %}\n{{ '<|assistant|>\n'  "
          "+ message['content'] + eos_token }}\n{% endif %}\n{% if loop.last and add_generation_prompt %}\n"
          "{{ '<|assistant|>' }}\n{% endif %}\n{% endfor %}")

F_FILTERS = ("{{ messages|length }} {{ (messages|first).role|upper }} {{ messages|map(attribute='role')|join(',') }} "
             "{{ 'abcb'|replace('b','X') }} {{ none|default('d') }} {{ nothing|default('u') }} "
             "{{ ''|default('e', true) }} {{ [3,1]|reverse|list }} {{ 7 is odd }} {{ 10 is divisibleby(5) }} "
             "{{ 'a' in 'cat' }} {{ 'z' not in ['a'] }} {{ messages|last|tojson }} {{ {'a': [1, 2.5, none, true]}|tojson }} "
             "{{ '  x  '|trim }}|{{ 'Hello World'|lower }}|{{ 'hello world'|title }}|{{ 'hello'|capitalize }} "
             "{{ 'abc'|list }} {{ '3'|int + 1 }} {{ 2|float }} {{ -3|abs }} {{ 'x'|string }} {{ 'a\"b'|tojson }} "
             "{{ {'k': 'v'}|items|list }} {{ messages[0] is mapping }} {{ 'x' is string }} {{ 1.5 is number }} "
             "{{ none is none }} {{ messages is iterable }} {{ 3 is integer }} {{ 'ab' is lower }}")

F_ARITH = ("{{ 1 + 2 * 3 }} {{ (1 + 2) * 3 }} {{ 7 // 2 }} {{ -7 // 2 }} {{ -7 % 3 }} {{ 7 % -3 }} {{ 2 ** 10 }} "
           "{{ 1 / 4 }} {{ 0.1 + 0.2 }} {{ 1e20 }} {{ 1.5e-7 }} {{ 3.0 }} {{ 10 / 2 }} {{ true }} {{ none }} "
           "{{ [1, 'a', none, \"it's\"] }} {{ {'k': [1, 2]} }} {{ 'x' ~ 1 ~ true ~ none }} {{ 'ab' * 3 }} "
           "{{ [0] * 2 }} {{ 2 < 3 < 4 }} {{ 'a' < 'b' }} {{ 1 == 1.0 }} {{ [1, 2] == [1, 2] }} {{ -(3) }} "
           "{{ 1_000 + 1 }} {{ 12345678901234567 }} {{ 2.5 * 2 }} {{ 'line1\\nline2' }}")

F_STRINGS = ("{{ 'héllo wörld'[1:4] }}|{{ 'abcdef'[::-2] }}|{{ messages[-1].content[:5] }}|{{ ' a  b '.split() }}|"
             "{{ 'a,b,,c'.split(',') }}|{{ 'a,b,c'.split(',', 1) }}|{{ 'xxhixx'.strip('x') }}|{{ '  hi '.lstrip() }}|"
             "{{ '  hi  '.rstrip() }}|{{ 'Hello'.startswith('He') }}|{{ 'Hello'.endswith(('x', 'lo')) }}|"
             "{{ 'hello world'.title() }}|{{ '-'.join(['a','b']) }}|{{ 'aaa'.count('a') }}|{{ 'abc'.find('c') }}|"
             "{{ 'abc'.upper() }}|{{ 'a-b'.replace('-', '+') }}|{{ 'x'[5:] }}|{{ [1,2,3,4][1:-1] }}|"
             "{{ [1,2,3][-1] }}|{{ 'ünï'|length }}|{{ 'ünï'[-1] }}|{{ {'a': 1}.get('a') }}|{{ {'a': 1}.get('b', 'd') }}|"
             "{{ {'b': 1, 'a': 2}.keys()|list }}|{{ '12'.isdigit() }}|{{ messages[0].content.split(' ')[0] }}")

F_LOOPS = """{%- set ns = namespace(n=0) -%}
{%- for m in messages if m.role != 'system' -%}
{{ loop.index }}/{{ loop.length }}{{ '*' if loop.first }}{{ '$' if loop.last }}:{{ m.role[0] }}{% if loop.previtem is defined %}<{{ loop.previtem.role }}{% endif %}{{ loop.revindex0 }} 
{%- set ns.n = ns.n + 1 -%}
{%- if m.role == 'user' and 'question' in m.content %}{% break %}{% endif -%}
{%- endfor %}
count={{ ns.n }}
{% for k, v in {'a': 1, 'b': 2}.items() %}{{ k }}={{ v }};{% endfor %}

{% for x in [] %}x{% else %}empty{% endfor %}

{% for i in range(6) %}{% if i is even %}{% continue %}{% endif %}{{ i }}{% endfor %}
{% for i in range(2, 9, 3) %}{{ i }},{% endfor %}
{% set block %}  <{{ messages|length }}>  {% endset %}[{{ block|trim }}]
{% macro turn(role, text='-') %}<{{ role }}:{{ text|trim }}>{% endmacro %}
{% for m in messages %}{{ turn(m.role, m.content) }}{% endfor %}{{ turn('x') }}{{ turn(text='kw', role='r') }}
{% set x = 1 %}{% for i in range(3) %}{{ x }}{% if i == 0 %}{% set x = 5 %}{% endif %}{{ x }},{% endfor %}{{ x }}
{% for a in ['p', 'q'] %}{% for b in [1, 2] %}{{ a }}{{ b }}{{ loop.index }}{% endfor %}|{{ loop.index }} {% endfor %}
"""

F_SPACE = """  {% if true %}
    indented
  {% endif %}
a  {% if true %}keep{% endif %}  b
{# a comment #}
{%- for m in messages %}
  - {{ m.role }}
{% endfor %}
{%+ if true %}plus{% endif %}
x {{- ' y ' -}} z
{% if false %}
no
{% else %}
else-branch
{% endif %}
tail"""

F_COND = ("{{ 'a' if false }}|{{ 1 and 2 }}|{{ 0 or 'z' }}|{{ not messages }}|{% if messages[0].role == 'system' and "
          "messages|length > 2 %}yes{% elif x is defined %}def{% else %}no{% endif %}|{{ x is not defined }}|"
          "{{ messages[0]['missing'] is defined }}|{{ messages[0]['missing'] is none }}|"
          "{{ 'yes' if messages[0].role in ['system', 'user'] else 'no' }}|{{ not 1 == 2 }}|"
          "{% if add_generation_prompt %}gen{% endif %}|{{ bos_token }}{{ eos_token }}|"
          "{{ 'ok' if (messages|length is odd) else 'even' }}")

F_RAISE = "{% for m in messages %}{% if m.role == 'system' %}{{ raise_exception('no system: ' + m.content) }}{% endif %}{% endfor %}"
F_UNDEF_ATTR = "{{ foo.bar }}"

CONV6 = [("system", "You are a helpful assistant"), ("user", "Hello"), ("assistant", "Hi there"),
         ("user", "Who are you"), ("assistant", "   I am an assistant   "), ("user", "Another question")]
SHORT = [("system", "Be brief."), ("user", "Hi"), ("assistant", "Hello!"), ("user", "What is 2+2?")]
NOSYS = [("user", "Hello there, how are you?"), ("assistant", "Fine.\nThanks!"), ("user", " A second question? ")]
ONE = [("user", "Hi")]
UNI = [("user", "Grüße 🙂 — «quotes» 'single' \"double\" \\back\\slash\n\ttab"),
       ("assistant", "<think>\nreasoning here\n</think>\n\nAnswer: 42"),
       ("user", "and then?")]
THINK = [("system", "S"), ("user", "Q1"), ("assistant", "<think>\nr1\n</think>\n\nA1"), ("user", "Q2"),
         ("assistant", "<think>\nr2\n</think>\n\nA2")]

TOKENS = {"llama": ("<s>", "</s>"), "gemma": ("<bos>", "<eos>"), "qwen": ("", "<|im_end|>"),
          "llama3": ("<|begin_of_text|>", "<|eot_id|>"), "none": ("", "")}

CASES = []


def add(name, tmpl, convs, tokens, gens=(True, False)):
    for cname, conv in convs:
        for gen in gens:
            CASES.append(("%s/%s/%s" % (name, cname, "gen" if gen else "nogen"), tmpl, conv, tokens, gen))


ALL = [("conv6", CONV6), ("short", SHORT), ("nosys", NOSYS), ("one", ONE), ("uni", UNI), ("empty", [])]
add("gemma3", GEMMA3, ALL + [("think", THINK)], TOKENS["gemma"])
add("qwen2.5", QWEN25, ALL, TOKENS["qwen"])
add("qwen3", QWEN3, ALL + [("think", THINK)], TOKENS["qwen"])
add("smollm2", SMOLLM2, ALL, TOKENS["none"])
add("llama3", LLAMA3, ALL, TOKENS["llama3"])
add("llama3.1", LLAMA31, ALL, TOKENS["llama3"])
add("mistral-v0.2", MISTRAL_V02, ALL, TOKENS["llama"])
add("llama2", LLAMA2, ALL, TOKENS["llama"])
add("fusionnet", FUSIONNET, ALL, TOKENS["llama"])
add("phi3", PHI3, ALL, TOKENS["llama"])
add("zephyr", ZEPHYR, ALL, TOKENS["none"])
add("f-filters", F_FILTERS, [("conv6", CONV6), ("uni", UNI)], TOKENS["none"], (True,))
add("f-arith", F_ARITH, [("one", ONE)], TOKENS["none"], (True,))
add("f-strings", F_STRINGS, [("conv6", CONV6), ("short", SHORT)], TOKENS["none"], (True,))
add("f-loops", F_LOOPS, [("conv6", CONV6), ("nosys", NOSYS), ("empty", [])], TOKENS["none"], (True,))
add("f-space", F_SPACE, [("short", SHORT)], TOKENS["none"], (True,))
add("f-cond", F_COND, [("conv6", CONV6), ("nosys", NOSYS)], TOKENS["llama"])
add("f-raise", F_RAISE, [("conv6", CONV6), ("nosys", NOSYS)], TOKENS["none"], (True,))
add("f-undef-attr", F_UNDEF_ATTR, [("one", ONE)], TOKENS["none"], (True,))


def main():
    e = env()
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    n_err = 0
    with open(OUT, "w") as f:
        f.write("# chat-template renders by Python jinja2 %s (transformers' settings), "
                "written by tools/make_jinja_fixtures.py; see its docstring for the format\n" % jinja2.__version__)
        for name, tmpl, conv, (bos, eos), gen in CASES:
            msgs = [{"role": r, "content": c} for r, c in conv]
            f.write("case %s\n" % name)
            f.write("tmpl %s\n" % tmpl.encode().hex())
            f.write("bos %s\n" % bos.encode().hex())
            f.write("eos %s\n" % eos.encode().hex())
            f.write("gen %d\n" % int(gen))
            for r, c in conv:
                f.write("msg %s %s\n" % (r.encode().hex() or "-", c.encode().hex() or "-"))
            try:
                out = e.from_string(tmpl).render(messages=msgs, add_generation_prompt=gen,
                                                 bos_token=bos, eos_token=eos)
                f.write("out %s\n" % (out.encode().hex() or "-"))
            except jinja2.exceptions.TemplateError as ex:
                n_err += 1
                f.write("err %s\n" % (str(ex).encode().hex() or "-"))
            f.write("end\n")
    print("%s: %d cases (%d raise)" % (os.path.relpath(OUT, ROOT), len(CASES), n_err))


if __name__ == "__main__":
    sys.exit(main())
