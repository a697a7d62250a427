"""Prompts the tensor-parallel tests share (a module of its own: `conftest` names clash across test folders)."""

PROMPTS = [
    "import os",
    "def main():\n    return",
    "class Foo(object):\n    def __init__(self, x):\n        self.x = x\n",
    "x = 1",
    "for i in range(10):\n    print(i)\n",
]
