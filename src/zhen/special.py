"""The special token ids, the one place they are defined.

Every SentencePiece model zhen trains or loads has them at these ids (the tokenizer checks), and the
network, the batches, the loss and the search all read them from here:

    PAD_ID 0   padding, never predicted
    UNK_ID 1   unknown; with byte fallback (the default) no input ever produces it
    BOS_ID 2   begin of sentence: the first decoder input
    EOS_ID 3   end of sentence: ends every source sentence and every target
"""

PAD_ID, UNK_ID, BOS_ID, EOS_ID = 0, 1, 2, 3
