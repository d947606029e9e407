"""An offline character-level tokenizer for the tiny from-config models of `temoe.testing` (vocab 128).

Ids: 0 `<pad>`, 1 `<s>`, 2 `</s>` (matching the tiny configs' pad/bos/eos), 3 `<unk>`, then the 95 printable
ASCII characters and newline. Anything else maps to `<unk>`. Built in code: no files, no network.
"""

from __future__ import annotations

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

_SPECIALS = ("<pad>", "<s>", "</s>", "<unk>")
_CHARS = [chr(c) for c in range(32, 127)] + ["\n"]


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    """A left-padding character tokenizer whose 100 ids fit the tiny models' vocabulary of 128."""
    vocab = {token: i for i, token in enumerate((*_SPECIALS, *_CHARS))}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")  # one token per character
    tok.decoder = decoders.Fuse()  # concatenate characters back without separators
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>",
                                   unk_token="<unk>", padding_side="left")
