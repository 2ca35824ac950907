"""``main.c``: an example program around an exported model (``--example``).

- A character model: ``./NAME PROMPT N`` prints the prompt and its greedy continuation of N tokens
  (as ``fastrnn generate --temperature 0`` prints them); ``./NAME --temperature T --seed S PROMPT N``
  samples, with the draws of ``Model.generate(PROMPT, N, temperature=T, seed=S)``.
- A classifier: every line of stdin gives one line ``label<TAB>p_1<TAB>...<TAB>p_C`` (as
  ``fastrnn classify``: a leading byte-order mark and the line ending removed, the first 10,000
  characters used, "unknown" when more than the model's unknown threshold of the characters are
  outside the vocabulary).

The program is the only part of the export that uses the C library (stdio, stdlib, string).
"""
from __future__ import annotations

from .ctext import c_float

GENERATOR = r"""/* main.c: an example program for $name.c, written by fastrnn export-c.
 *
 *   cd DIR && cc -O2 *.c -lm -o $name
 *   ./$name PROMPT N                                the prompt, then its greedy continuation of N tokens
 *   ./$name --temperature T --seed S PROMPT N      sampled: the draws of Model.generate(PROMPT, N,
 *                                                  temperature=T, seed=S)
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "$name.h"

static $name_state state; /* static: the state struct holds the work buffers too */

static int usage(const char *program)
{
    fprintf(stderr, "usage: %s [--temperature T] [--seed S] PROMPT N\n", program);
    return 2;
}

int main(int argc, char **argv)
{
    double temperature = 0.0;
    uint64_t seed = 0;
    int have_seed = 0, i, length, count;
    long n = -1;
    const char *prompt = 0;
    int32_t *ids, *out;
    char *end;

    for (i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--temperature") == 0 && i + 1 < argc) {
            temperature = strtod(argv[++i], &end);
            if (*end || !(temperature >= 0.0))
                return usage(argv[0]);
        } else if (strcmp(argv[i], "--seed") == 0 && i + 1 < argc) {
            seed = (uint64_t)strtoull(argv[++i], &end, 10);
            if (*end)
                return usage(argv[0]);
            have_seed = 1;
        } else if (!prompt) {
            prompt = argv[i];
        } else if (n < 0) {
            n = strtol(argv[i], &end, 10);
            if (*end || n < 0 || n > 100000000L)
                return usage(argv[0]);
        } else {
            return usage(argv[0]);
        }
    }
    if (!prompt || n < 0)
        return usage(argv[0]);
    if (!have_seed)
        seed = (uint64_t)time(0);
    length = $name_encode(prompt, 0, 0);
    if (length < 0) {
        fprintf(stderr, "%s: the prompt has a character the model's vocabulary has no id for\n", argv[0]);
        return 2;
    }
    if (length == 0) {
        fprintf(stderr, "%s: the prompt is empty: generation needs at least one character\n", argv[0]);
        return 2;
    }
    ids = malloc((size_t)length * sizeof *ids);
    out = malloc((size_t)(n > 0 ? n : 1) * sizeof *out);
    if (!ids || !out) {
        fprintf(stderr, "%s: out of memory\n", argv[0]);
        return 2;
    }
    $name_encode(prompt, ids, length);
    $name_reset(&state);
    count = $name_generate(&state, ids, length, (int)n, temperature, &seed, out);
    if (count < 0) {
        fprintf(stderr, "%s: generation failed (error %d, see $name.h)\n", argv[0], count);
        return 2;
    }
    fputs(prompt, stdout);
    for (i = 0; i < count; i++)
        fputs($name_token(out[i]), stdout);
    putchar('\n');
    free(ids);
    free(out);
    return 0;
}
"""

CLASSIFIER = r"""/* main.c: an example program for $name.c, written by fastrnn export-c.
 *
 *   cd DIR && cc -O2 *.c -lm -o $name
 *   ./$name < lines.txt      one output line per input line: label<TAB>p_1<TAB>...<TAB>p_C
 *
 * Lines are read as fastrnn classify reads them: UTF-8, a leading byte-order mark and the line
 * ending (\n, \r\n) removed, only the first $max_length characters used (a warning names the first
 * longer line). The label is "unknown" when more than $threshold_text of a line's characters are
 * outside the vocabulary.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <math.h>

#include "$name.h"

#define MAX_LENGTH $max_length
#define LINE_BYTES (4 * MAX_LENGTH + 8) /* the first MAX_LENGTH characters of a line, UTF-8 */

static $name_state state;
static char line[LINE_BYTES];
static int32_t ids[MAX_LENGTH];

/* The model's output -> class probabilities, as fastrnn.classify (head: $activation) */
static void probabilities(const float *out, float *p)
{
$probabilities
}

/* How many bytes of text hold its first max_chars characters (UTF-8 lead bytes counted) */
static size_t cut(const char *text, size_t bytes, long max_chars, int *was_cut)
{
    size_t i;
    long chars = 0;
    for (i = 0; i < bytes; i++) {
        if (((unsigned char)text[i] & 0xC0) != 0x80) {
            if (chars == max_chars) {
                *was_cut = 1;
                return i;
            }
            chars++;
        }
    }
    return bytes;
}

int main(void)
{
    long number = 0;
    int c, warned = 0;
    for (;;) {
        size_t used = 0, start = 0;
        int any = 0, was_cut = 0, count, k, best;
        float out[$NAME_OUTPUT_SIZE], p[$NAME_NUM_CLASSES], unknown;
        while ((c = getchar()) != EOF) {
            any = 1;
            if (c == '\n')
                break;
            if (used < LINE_BYTES - 1)
                line[used++] = (char)c;
            else
                was_cut = 1;
        }
        if (!any)
            break;
        number++;
        if (used && line[used - 1] == '\r')
            used--;
        if (used >= 3 && (unsigned char)line[0] == 0xEF && (unsigned char)line[1] == 0xBB
            && (unsigned char)line[2] == 0xBF)
            start = 3;
        used = start + cut(line + start, used - start, MAX_LENGTH, &was_cut);
        line[used] = 0;
        if (was_cut && !warned) {
            fprintf(stderr, "warning: input %ld is longer than max_length=%d: only its first %d characters are "
                            "classified\n", number - 1, MAX_LENGTH, MAX_LENGTH);
            warned = 1;
        }
        count = $name_encode(line + start, ids, MAX_LENGTH);
        if (count < 0) {
            fprintf(stderr, "line %ld has a character the model's vocabulary has no id for\n", number);
            return 2;
        }
        if (count > MAX_LENGTH)
            count = MAX_LENGTH;
        unknown = 1.0f;
        if (count > 0) {
            int n_unknown = 0;
            for (k = 0; k < count; k++)
                n_unknown += ids[k] == $NAME_UNK_ID;
            unknown = (float)n_unknown / (float)count;
        }
        $name_reset(&state);
        k = $name_predict(&state, ids, count, out);
        if (k != $NAME_OK) {
            fprintf(stderr, "line %ld: the model refused it (error %d, see $name.h)\n", number, k);
            return 2;
        }
        probabilities(out, p);
        best = 0;
        for (k = 1; k < $NAME_NUM_CLASSES; k++)
            if (p[k] > p[best])
                best = k;
        fputs($unknown_test ? "unknown" : $name_labels[best], stdout);
        for (k = 0; k < $NAME_NUM_CLASSES; k++)
            printf("\t%.6g", (double)p[k]);
        putchar('\n');
    }
    return 0;
}
"""


def probability_code(activation, n_out):
    if activation == "softmax":
        return f"    int k;\n    for (k = 0; k < {n_out}; k++)\n        p[k] = out[k];"
    if activation == "log_softmax":
        return f"    int k;\n    for (k = 0; k < {n_out}; k++)\n        p[k] = expf(out[k]);"
    if activation == "sigmoid" and n_out == 1:
        return "    p[0] = 1.0f - out[0];\n    p[1] = out[0];"
    if activation == "sigmoid":
        return f"    int k;\n    for (k = 0; k < {n_out}; k++)\n        p[k] = out[k];"
    # linear: logits -> softmax
    return (f"    int k;\n    float top = out[0], sum = 0.0f;\n    for (k = 1; k < {n_out}; k++)\n"
            f"        if (out[k] > top)\n            top = out[k];\n    for (k = 0; k < {n_out}; k++) {{\n"
            f"        p[k] = expf(out[k] - top);\n        sum += p[k];\n    }}\n    for (k = 0; k < {n_out}; k++)\n"
            f"        p[k] = p[k] / sum;")


def generator_main(name):
    return GENERATOR.replace("$name", name)


def classifier_main(name, activation, n_out, threshold, max_length):
    P = name.upper() + "_"
    unknown = "0" if threshold is None else f"unknown > {c_float(threshold)}"
    text = (CLASSIFIER.replace("$probabilities", probability_code(activation, n_out))
            .replace("$activation", activation).replace("$max_length", str(max_length))
            .replace("$threshold_text", "(no threshold: never)" if threshold is None else f"{threshold:g}")
            .replace("$unknown_test", unknown).replace("$NAME_", P).replace("$name", name))
    if threshold is None:  # the fraction is computed but not used: say so to -Wunused-but-set-variable
        text = text.replace("        unknown = 1.0f;\n", "        unknown = 1.0f;\n        (void)unknown;\n")
    return text
