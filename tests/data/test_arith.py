"""The arith task's canvas: what a diffusion adder is trained on is the window its decoders are given."""
import pytest

import unmask
from unmask.data.arith import MARKER, ArithTask
from unmask.evaluation import evaluate
from unmask.tokenizers import CharTokenizer


@pytest.mark.parametrize("reasoning", [True, False])
def test_the_trained_canvas_is_the_decoding_window(reasoning):
    task, tok = ArithTask(reasoning=reasoning, n_test=50), CharTokenizer()
    for ex in task.test_examples:
        ids, start = task.encode(tok, ex, fill=True)
        canvas = ids[start:]
        assert len(canvas) == task.max_window, ex
        answer = canvas[task.answer_start:]
        digits = str(sum(task.terms(ex.prompt)))
        assert tok.decode(answer[:len(digits)]) == digits and set(answer[len(digits):]) == {tok.eos_token_id}
        if reasoning:
            assert tok.decode([canvas[task.answer_start - 1]]) == MARKER
            assert len(task.template(3)) == task.max_window


def test_the_bundled_direct_adder_answers_in_its_default_window():
    # Decoded in a window one token short of its training canvas it answered 0.3% (it did, until the windows
    # were made one); in its own window, most sums.
    result = evaluate(unmask.load_model("arith-mdm-direct"), strategy="low_confidence", limit=64)
    assert result["max_new_tokens"] == ArithTask(reasoning=False).max_window
    assert result["accuracy"] > 0.5
