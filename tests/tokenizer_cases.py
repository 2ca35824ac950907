"""Texts and tokenizer settings shared by tests/test_tokenizers.py and the script that made its
fixtures (tests/fixtures/keras2_tokenizer/make_fixtures.py). Plain data."""
import numpy as np

REVIEWS = [
    "이 영화 정말 재밌어요!! 강추합니다", "배우들 연기가 최고, 다시 보고 싶다", "스토리가 너무 지루하고 뻔해요...",
    "돈 아까운 영화. 시간 낭비", "음악이 좋았고 영상미도 훌륭함", "최악의 결말;; 실망했어요",
    "가족과 함께 보기 좋은 영화", "연출이 엉망이고 대사가 어색하다", "배우들 연기가 최고 최고!",
    "정말 지루하다 지루해", "감동적인 이야기, 눈물이 났다", "별로였어요 추천 안 함",
]
LABELS = np.array([1, 1, 0, 0, 1, 0, 1, 0, 1, 0, 1, 0])
UNSEEN = ["처음 보는 단어들로 가득한 리뷰", "정말 최고 최고 최고 최고 최고 최고 최고 최고 최고 최고 최고 최고 영화",
          "지루해", "ABC 영화!! 재밌어요"]


CASE_FILES = {"word, mask_zero, post": "word_oov_post", "word, no mask, pre": "word_pre",
              "char, no mask, pre": "char_pre"}
CASES = {
    # a masked LSTM: the padding side does not matter to it; post padding, words cut at the end
    "word, mask_zero, post": (dict(num_words=40, oov_token="<OOV>"), dict(maxlen=8, padding="post",
                                                                           truncating="post"), True),
    # no mask: the model sees the zeros; Keras's defaults (pre / pre); unknown words dropped
    "word, no mask, pre": (dict(), dict(maxlen=10), False),
    # characters (Hangul syllables), no mask, pre padding
    "char, no mask, pre": (dict(char_level=True, oov_token="?"), dict(maxlen=24), False),
}
