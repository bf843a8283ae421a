"""Generation's text (issue 29): the new tokens' text follows the prompt however the prompt
ends. A chat-template prompt holds the end-of-turn token itself; only an EOS among the new
tokens ends the text."""
from pathlib import Path

from sparsity_jax.data.hf_vocab import HFTokenizerVocabulary
from sparsity_jax.workflows.generation import new_text

TOKENIZER = Path(__file__).resolve().parents[1] / "fixtures" / "hf" / "llama_gqa_llama3" / "tokenizer.json"


def test_an_end_token_in_the_prompt_does_not_cut_the_new_text():
    vocab = HFTokenizerVocabulary(str(TOKENIZER))
    prompt = list(vocab.encode("the quick</s>"))
    assert prompt[-1] == vocab.eos_id  # the prompt ends with the end token, as a chat template's turn does
    new = list(vocab.encode("the brown fox"))[1:]  # generated ids: no BOS
    assert vocab.decode(prompt + new) == "the quick"  # decoding prompt and new ids together loses the new text
    assert new_text(vocab, new) == "the brown fox"
    assert new_text(vocab, new + [vocab.eos_id] + new) == "the brown fox"  # an EOS among the new ids ends it
