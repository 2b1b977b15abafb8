"""The shapes data set's vocabulary: shapes, colours, sizes, relations, classes,
and the constants of scene generation."""


SHAPES = ("square", "circle", "triangle", "cross", "ring", "diamond")


COLOURS = ("red", "green", "blue", "yellow", "purple", "orange", "cyan", "white")


SIZES = ("small", "large")


PALETTE = {
    "red": (220, 45, 45),
    "green": (45, 190, 60),
    "blue": (40, 60, 230),
    "yellow": (240, 220, 40),
    "purple": (150, 60, 200),
    "orange": (240, 140, 30),
    "cyan": (40, 200, 210),
    "white": (240, 240, 240),
}


RELATIONS = ("left", "right", "above", "below")


INVERSE_RELATION = {"left": "right", "right": "left", "above": "below",
                    "below": "above"}


CLASS_NAMES = ("background",) + tuple(
    f"{colour} {shape}" for shape in SHAPES for colour in COLOURS)


NUM_CLASSES = len(CLASS_NAMES)


BACKGROUND_CLASS = 0


SPLITS = ("train", "val", "test")


PROJECTION_SEED = 2003_13198


RAW_DESCRIPTOR_DIM = 177


DEFAULT_FEATURE_DIM = 2048


DEFAULT_IMAGE_SIZE = 128


_GRID = 16


_FOREGROUND_THRESHOLD = 48.0


_SIZE_RANGE = {"small": (0.13, 0.19), "large": (0.27, 0.34)}


_MAX_BOX_IOU = 0.2


_MAX_OVERLAP_OF_SMALLER = 0.35


_MIN_VISIBLE_FRACTION = 0.65


_REPEAT_PROBABILITY = 0.2


_RELATION_MIN_OFFSET = 0.1


_RELATION_DOMINANCE = 1.25


_NUMBER_EN = {1: "one", 2: "two", 3: "three", 4: "four", 5: "five"}


_NUMBER_ZH = {1: "一", 2: "两", 3: "三", 4: "四", 5: "五"}


_COLOUR_ZH = {"red": "红色", "green": "绿色", "blue": "蓝色", "yellow": "黄色",
              "purple": "紫色", "orange": "橙色", "cyan": "青色",
              "white": "白色"}


_SHAPE_ZH = {"square": "正方形", "circle": "圆形", "triangle": "三角形",
             "cross": "十字形", "ring": "圆环", "diamond": "菱形"}


_SIZE_ZH = {"small": "小", "large": "大"}


_RELATION_EN = {"left": "to the left of", "right": "to the right of",
                "above": "above", "below": "below"}


_RELATION_ZH = {"left": ("左边", "左侧"), "right": ("右边", "右侧"),
                "above": ("上面", "上方"), "below": ("下面", "下方")}


def class_index(colour, shape):
    """Index of the class "colour shape" in `CLASS_NAMES`."""
    if colour not in COLOURS:
        raise ValueError(f"`colour` must be one of {COLOURS}. Received: {colour!r}")
    if shape not in SHAPES:
        raise ValueError(f"`shape` must be one of {SHAPES}. Received: {shape!r}")
    return 1 + SHAPES.index(shape) * len(COLOURS) + COLOURS.index(colour)
