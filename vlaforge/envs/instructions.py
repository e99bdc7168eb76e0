"""Language instructions for the 50 Meta-World v3 tasks, written by us (Meta-World ships none).

Each task has five paraphrases of the same goal, from the task descriptions of the Meta-World paper
(Yu et al. 2019, appendix). Splits: the LAST ``heldout`` paraphrases of every task are held out of
training, so an evaluation can ask whether a policy follows unseen wordings of a known task. The list
order is therefore part of the experiment definition: append new paraphrases, never reorder.

Colours named below are the ones Meta-World renders (red pucks, red reach target), but
at 64 px the goal marker is 1-2 pixels (STACK.md), so most wordings name the goal, not its colour.
"""

from __future__ import annotations

import difflib
from typing import Literal

import numpy as np

Split = Literal["train", "heldout", "all"]

# Insertion order = Meta-World's ALL_V3_ENVIRONMENTS order (its one-hot task id), checked by a test.
_PARAPHRASES: dict[str, tuple[str, ...]] = {
    "assembly-v3": (
        "pick up the nut and put it onto the peg",
        "grab the ring by its handle and slide it down over the peg",
        "assemble the nut onto the peg",
        "place the round nut on the vertical peg",
        "fit the nut over the peg",
    ),
    "basketball-v3": (
        "dunk the ball into the basket",
        "pick up the basketball and put it through the hoop",
        "grab the ball and drop it in the basket",
        "score a basket with the ball",
        "carry the ball over to the hoop and dunk it",
    ),
    "bin-picking-v3": (
        "move the puck from one bin to the other bin",
        "pick the puck out of the left bin and place it in the right bin",
        "grasp the puck and transfer it into the other bin",
        "take the object out of its bin and drop it into the empty bin",
        "relocate the puck to the second bin",
    ),
    "box-close-v3": (
        "put the lid on the box",
        "close the box with its cover",
        "pick up the lid and place it on top of the box",
        "grab the box cover and shut the box",
        "cover the box",
    ),
    "button-press-topdown-v3": (
        "press the button from the top",
        "push the button down from above",
        "press down on the button",
        "move above the button and push it down",
        "hit the button with a downward push",
    ),
    "button-press-topdown-wall-v3": (
        "press the button from the top behind the wall",
        "reach over the wall and push the button down",
        "go around the wall and press the button from above",
        "push down the button that sits behind a wall",
        "avoid the wall and press the button downward",
    ),
    "button-press-v3": (
        "press the button",
        "push the button in from the front",
        "push the button forward",
        "press the button on the box in front of you",
        "poke the button until it clicks in",
    ),
    "button-press-wall-v3": (
        "press the button behind the wall",
        "go around the wall and push the button in",
        "avoid the wall and press the button",
        "reach past the wall to push the button",
        "push in the button that is blocked by a wall",
    ),
    "coffee-button-v3": (
        "press the button on the coffee machine",
        "push the coffee machine button",
        "start the coffee machine by pressing its button",
        "hit the button on the front of the coffee maker",
        "turn on the coffee machine",
    ),
    "coffee-pull-v3": (
        "pull the mug out from under the coffee machine",
        "take the cup away from the coffee machine",
        "slide the mug back from the coffee maker to the goal",
        "grab the mug and pull it out of the coffee machine",
        "remove the coffee cup from the machine",
    ),
    "coffee-push-v3": (
        "push the mug under the coffee machine",
        "slide the cup into the coffee machine",
        "place the mug beneath the coffee spout",
        "move the coffee cup under the machine",
        "put the mug in position under the coffee maker",
    ),
    "dial-turn-v3": (
        "turn the dial",
        "rotate the dial half a turn",
        "spin the knob around",
        "twist the dial to the target angle",
        "turn the knob on the dial",
    ),
    "disassemble-v3": (
        "pick the nut up off the peg",
        "take the nut off the peg",
        "lift the ring up and off the peg",
        "remove the nut from the peg",
        "disassemble the nut from the peg",
    ),
    "door-close-v3": (
        "close the door",
        "swing the door shut",
        "push the door closed",
        "shut the open door",
        "push the door until it closes",
    ),
    "door-lock-v3": (
        "lock the door",
        "turn the lock on the door",
        "rotate the door lock down to lock it",
        "turn the knob to lock the door",
        "secure the door by turning its lock",
    ),
    "door-open-v3": (
        "open the door",
        "pull the door open by its handle",
        "swing the door open",
        "grab the door handle and open the door",
        "pull the door until it opens",
    ),
    "door-unlock-v3": (
        "unlock the door",
        "turn the lock to unlock the door",
        "rotate the door lock up to unlock it",
        "twist the lock knob to open the lock",
        "release the door lock",
    ),
    "hand-insert-v3": (
        "put the gripper into the hole",
        "insert the hand into the hole in the table",
        "move the gripper down into the hole",
        "reach into the hole with the gripper",
        "lower the hand into the opening",
    ),
    "drawer-close-v3": (
        "close the drawer",
        "push the drawer shut",
        "slide the drawer closed",
        "push the drawer back in",
        "shut the open drawer",
    ),
    "drawer-open-v3": (
        "open the drawer",
        "pull the drawer open",
        "grab the drawer handle and pull it out",
        "slide the drawer out",
        "pull out the drawer by its handle",
    ),
    "faucet-open-v3": (
        "open the faucet",
        "turn the faucet on",
        "rotate the faucet handle counterclockwise",
        "turn on the tap",
        "twist the faucet handle to open it",
    ),
    "faucet-close-v3": (
        "close the faucet",
        "turn the faucet off",
        "rotate the faucet handle clockwise",
        "turn off the tap",
        "twist the faucet handle to close it",
    ),
    "hammer-v3": (
        "hammer the nail into the wall",
        "pick up the hammer and drive the nail in",
        "use the hammer to hit the nail",
        "grab the hammer and knock the nail into the board",
        "pound the nail with the hammer",
    ),
    "handle-press-side-v3": (
        "press the handle down from the side",
        "push the side handle down",
        "press down on the handle from the side",
        "push the lever handle down sideways",
        "move to the side of the handle and press it down",
    ),
    "handle-press-v3": (
        "press the handle down",
        "push the handle down",
        "press down on the handle",
        "push the lever handle all the way down",
        "lower the handle by pressing on it",
    ),
    "handle-pull-side-v3": (
        "pull the handle up from the side",
        "lift the side handle up",
        "pull up on the handle from the side",
        "raise the lever handle sideways",
        "move to the side of the handle and pull it up",
    ),
    "handle-pull-v3": (
        "pull the handle up",
        "lift the handle",
        "pull up on the handle",
        "raise the lever handle all the way up",
        "grab the handle and pull it upward",
    ),
    "lever-pull-v3": (
        "pull the lever",
        "rotate the lever up",
        "pull the lever up ninety degrees",
        "lift the lever arm",
        "swing the lever upward",
    ),
    "pick-place-wall-v3": (
        "pick up the puck and place it at the goal behind the wall",
        "grab the puck, lift it over the wall and put it at the target",
        "move the puck over the wall to the goal",
        "carry the object past the wall and set it down at the goal",
        "pick the puck up and place it on the other side of the wall",
    ),
    "pick-out-of-hole-v3": (
        "pick the puck out of the hole",
        "lift the puck out of the hole and move it to the goal",
        "take the object out of the hole",
        "grab the puck from inside the hole and raise it",
        "retrieve the puck from the hole",
    ),
    "pick-place-v3": (
        "pick up the puck and place it at the goal",
        "grab the puck and put it at the target location",
        "pick and place the object at the goal",
        "lift the puck and move it to the goal position",
        "carry the red puck to the target in the air",
    ),
    "plate-slide-v3": (
        "slide the plate into the cabinet",
        "push the plate forward into the goal",
        "slide the plate into the slot",
        "push the plate into the cabinet opening",
        "move the plate into the cabinet by sliding it",
    ),
    "plate-slide-side-v3": (
        "slide the plate into the cabinet from the side",
        "push the plate sideways into the goal",
        "slide the plate sideways into the slot",
        "push the plate into the cabinet from the side",
        "move the plate sideways into the cabinet",
    ),
    "plate-slide-back-v3": (
        "slide the plate out of the cabinet",
        "pull the plate back out of the goal",
        "get the plate out of the cabinet",
        "pull the plate back toward you",
        "slide the plate backward out of the slot",
    ),
    "plate-slide-back-side-v3": (
        "slide the plate out of the cabinet sideways",
        "pull the plate out of the goal from the side",
        "get the plate out of the cabinet by sliding it sideways",
        "slide the plate sideways out of the slot",
        "move the plate sideways back out of the cabinet",
    ),
    "peg-insert-side-v3": (
        "insert the peg into the hole from the side",
        "pick up the peg and push it sideways into the hole",
        "put the peg in the hole in the box",
        "grab the peg and slide it into the side hole",
        "plug the peg into the hole",
    ),
    "peg-unplug-side-v3": (
        "pull the peg out of the hole from the side",
        "unplug the peg",
        "remove the peg from the hole sideways",
        "grab the peg and pull it out of the box",
        "take the peg out of the hole",
    ),
    "soccer-v3": (
        "kick the ball into the goal",
        "push the soccer ball into the net",
        "score a goal with the ball",
        "move the ball into the goal",
        "shoot the soccer ball into the net",
    ),
    "stick-push-v3": (
        "use the stick to push the box",
        "grab the stick and push the object with it",
        "pick up the stick and use it to push the box to the goal",
        "push the box forward using the stick",
        "hold the stick and shove the box with it",
    ),
    "stick-pull-v3": (
        "use the stick to pull the box",
        "grab the stick and pull the object with it",
        "pick up the stick and use it to pull the box to the goal",
        "pull the box toward the goal using the stick",
        "hook the box with the stick and drag it",
    ),
    "push-v3": (
        "push the puck to the goal",
        "slide the puck across the table to the target",
        "push the object to the goal position",
        "move the puck to the target by pushing it",
        "shove the red puck over to the goal",
    ),
    "push-wall-v3": (
        "push the puck to the goal behind the wall",
        "slide the puck around the wall to the target",
        "push the object past the wall to the goal",
        "go around the wall and push the puck to the goal",
        "move the puck around the wall by pushing it",
    ),
    "push-back-v3": (
        "push the puck back to the goal",
        "slide the puck backward to the target",
        "pull the object back toward the goal",
        "move the puck back to the goal position",
        "bring the puck backward to the target",
    ),
    "reach-v3": (
        "reach the goal position",
        "move the gripper to the goal",
        "bring the robot hand to the target point",
        "reach out to the target location",
        "move the hand to the red target",
    ),
    "reach-wall-v3": (
        "reach the goal behind the wall",
        "move the gripper around the wall to the goal",
        "reach over the wall to the target position",
        "avoid the wall and move the hand to the goal",
        "get the gripper to the target on the other side of the wall",
    ),
    "shelf-place-v3": (
        "put the puck on the shelf",
        "pick up the puck and place it on the shelf",
        "grab the object and set it on the shelf",
        "lift the puck onto the shelf",
        "place the block on the shelf",
    ),
    "sweep-into-v3": (
        "sweep the puck into the hole",
        "push the puck into the hole in the table",
        "slide the object into the hole",
        "move the puck sideways until it drops into the hole",
        "sweep the block into the opening",
    ),
    "sweep-v3": (
        "sweep the puck off the table",
        "push the puck over the edge of the table",
        "slide the object off the side of the table",
        "sweep the block off the table",
        "push the puck sideways until it falls off the table",
    ),
    "window-open-v3": (
        "open the window",
        "slide the window open",
        "push the window sideways to open it",
        "slide the window pane open",
        "move the window handle to open the window",
    ),
    "window-close-v3": (
        "close the window",
        "slide the window shut",
        "push the window sideways to close it",
        "slide the window pane closed",
        "move the window handle to close the window",
    ),
}

ALL_TASKS: tuple[str, ...] = tuple(_PARAPHRASES)  # the 50 Meta-World v3 tasks, Meta-World's order


def unknown_task_error(name: str, valid: tuple[str, ...] | list[str] = ALL_TASKS) -> ValueError:
    """A ValueError naming the closest valid task (difflib), for typos like 'reach-v2' or 'drawer_open'."""
    close = difflib.get_close_matches(name, list(valid), n=1, cutoff=0.0)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    return ValueError(f"Unknown Meta-World task {name!r}.{hint} Valid names: the 50 *-v3 tasks, e.g. {valid[:3]}.")


def paraphrases(task: str) -> list[str]:
    """All instruction paraphrases of ``task`` (train first, held-out last)."""
    if task not in _PARAPHRASES:
        raise unknown_task_error(task)
    return list(_PARAPHRASES[task])


def instructions_for(task: str, split: Split = "train", heldout: int = 1) -> list[str]:
    """The paraphrases of ``task`` in ``split``: the last ``heldout`` ones are "heldout", the rest "train"."""
    all_ = paraphrases(task)
    if not 0 <= heldout < len(all_):
        raise ValueError(
            f"heldout={heldout} paraphrases for {task!r}: must be in [0, {len(all_) - 1}] "
            f"so that at least one training paraphrase remains (the task has {len(all_)})."
        )
    cut = len(all_) - heldout
    splits = {"train": all_[:cut], "heldout": all_[cut:], "all": all_}
    if split not in splits:
        raise ValueError(f"Unknown instruction split {split!r}: expected one of {sorted(splits)}.")
    out = splits[split]
    if not out:
        raise ValueError(f"Split {split!r} of {task!r} is empty with heldout={heldout}: hold out at least one.")
    return out


def sample_instruction(task: str, split: Split, heldout: int, rng: np.random.Generator) -> str:
    """One paraphrase of ``task`` from ``split``, drawn with ``rng`` (seed it for reproducible episodes)."""
    choices = instructions_for(task, split, heldout)
    return choices[int(rng.integers(len(choices)))]
