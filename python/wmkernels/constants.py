"""Numbers of the 1X World Model Challenge token format (v1.1), shared by the kernels and references."""

#: Bits of the MAGVIT2 lookup-free quantizer that produced the tokens.
LFQ_BITS = 18
#: Size of the token vocabulary, 2**18.
IMAGE_VOCAB_SIZE = 2**LFQ_BITS
#: Tokens are split into NUM_FACTORED_VOCABS factors of FACTORED_VOCAB_SIZE values each.
FACTORED_VOCAB_SIZE = 512
NUM_FACTORED_VOCABS = 2
#: Frames are FRAME_SIZE x FRAME_SIZE tokens.
FRAME_SIZE = 16
