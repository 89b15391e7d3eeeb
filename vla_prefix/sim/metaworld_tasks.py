"""Per-task text for the Meta-World suite: an instruction and two paraphrases for each of the 50 v3 tasks.

Keys are Meta-World env names (`pick-place-v3`). The wording follows the task descriptions of the
Meta-World paper (Yu et al., 2019), rewritten as imperative sentences a person would say.
"""

from __future__ import annotations

# env name -> (instruction, paraphrase, paraphrase)
INSTRUCTIONS: dict[str, tuple[str, str, str]] = {
    "assembly-v3": (
        "pick up the nut and fit it onto the peg",
        "grab the ring-shaped nut and slide it down over the peg",
        "assemble the nut onto the peg",
    ),
    "basketball-v3": (
        "pick up the ball and dunk it into the basket",
        "grab the basketball and drop it through the hoop",
        "put the ball in the basket",
    ),
    "bin-picking-v3": (
        "pick the cube out of the red bin and place it in the blue bin",
        "move the green cube from the red bin into the blue bin",
        "grab the cube from its bin and drop it in the empty bin",
    ),
    "box-close-v3": (
        "pick up the lid and put it on the box",
        "close the box with its lid",
        "grab the box lid and place it on top of the box",
    ),
    "button-press-topdown-v3": (
        "press the button down from above",
        "push the button from the top",
        "press down on the button",
    ),
    "button-press-topdown-wall-v3": (
        "press the button down from above, next to the wall",
        "reach over the wall and push the button from the top",
        "press down on the button behind the low wall",
    ),
    "button-press-v3": (
        "press the button on the front of the box",
        "push the button in horizontally",
        "press the button forward",
    ),
    "button-press-wall-v3": (
        "press the button on the front of the box, reaching past the wall",
        "get around the wall and push the button in",
        "press the button that sits behind the short wall",
    ),
    "coffee-button-v3": (
        "press the button on the coffee machine",
        "push the coffee machine's button",
        "start the coffee machine by pressing its button",
    ),
    "coffee-pull-v3": (
        "pull the mug out from under the coffee machine",
        "take the cup away from the coffee machine",
        "grab the mug and pull it back to the goal",
    ),
    "coffee-push-v3": (
        "push the mug under the coffee machine",
        "slide the cup forward until it sits under the coffee machine",
        "move the mug beneath the coffee spout",
    ),
    "dial-turn-v3": (
        "turn the dial",
        "rotate the dial on the panel",
        "twist the dial around",
    ),
    "disassemble-v3": (
        "pick the nut up off the peg",
        "lift the ring-shaped nut off the peg",
        "take the nut off the peg",
    ),
    "door-close-v3": (
        "close the door",
        "push the open door shut",
        "swing the door closed",
    ),
    "door-lock-v3": (
        "lock the door by turning the lock down",
        "turn the door lock to the locked position",
        "rotate the lock on the door to lock it",
    ),
    "door-open-v3": (
        "open the door",
        "pull the door open by its handle",
        "swing the door open",
    ),
    "door-unlock-v3": (
        "unlock the door by turning the lock",
        "turn the door lock to the unlocked position",
        "rotate the lock on the door to unlock it",
    ),
    "hand-insert-v3": (
        "put the gripper into the hole in the table",
        "insert the hand into the hole",
        "move the gripper down into the hole",
    ),
    "drawer-close-v3": (
        "close the drawer",
        "push the drawer shut",
        "slide the drawer closed",
    ),
    "drawer-open-v3": (
        "open the drawer",
        "pull the drawer out by its handle",
        "slide the drawer open",
    ),
    "faucet-open-v3": (
        "turn the faucet on",
        "rotate the faucet handle to open it",
        "open the tap",
    ),
    "faucet-close-v3": (
        "turn the faucet off",
        "rotate the faucet handle to close it",
        "close the tap",
    ),
    "hammer-v3": (
        "pick up the hammer and hammer the nail into the wall",
        "use the hammer to drive the nail in",
        "grab the hammer and knock the nail into the wall",
    ),
    "handle-press-side-v3": (
        "press the handle down from the side",
        "push the side handle down",
        "press down on the handle from the side",
    ),
    "handle-press-v3": (
        "press the handle down",
        "push the handle downward",
        "press down on the handle",
    ),
    "handle-pull-side-v3": (
        "pull the handle up from the side",
        "lift the side handle up",
        "pull up on the handle from the side",
    ),
    "handle-pull-v3": (
        "pull the handle up",
        "lift the handle upward",
        "pull up on the handle",
    ),
    "lever-pull-v3": (
        "pull the lever up",
        "raise the lever",
        "lift the lever to the top",
    ),
    "pick-place-wall-v3": (
        "pick up the puck, lift it over the wall and place it at the goal",
        "carry the puck over the wall to the goal",
        "grab the puck and put it down at the goal behind the wall",
    ),
    "pick-out-of-hole-v3": (
        "pick the puck up out of the hole",
        "lift the puck out of the hole and raise it to the goal",
        "take the puck out of the hole",
    ),
    "pick-place-v3": (
        "pick up the puck and place it at the goal",
        "grab the puck and put it at the goal",
        "move the puck to the goal by picking it up",
    ),
    "plate-slide-v3": (
        "slide the plate into the goal",
        "push the plate forward into the net",
        "slide the plate away from you into the goal",
    ),
    "plate-slide-side-v3": (
        "slide the plate sideways into the goal",
        "push the plate to the side into the net",
        "slide the plate across into the goal",
    ),
    "plate-slide-back-v3": (
        "slide the plate back out of the goal",
        "pull the plate back toward you out of the net",
        "get the plate back out of the goal",
    ),
    "plate-slide-back-side-v3": (
        "slide the plate sideways out of the goal",
        "pull the plate out of the net to the side",
        "get the plate out of the goal sideways",
    ),
    "peg-insert-side-v3": (
        "pick up the peg and insert it sideways into the hole",
        "push the peg into the hole in the side of the box",
        "grab the peg and slide it into the hole",
    ),
    "peg-unplug-side-v3": (
        "unplug the peg sideways from the hole",
        "pull the peg out of the hole",
        "grab the peg and pull it out to the side",
    ),
    "soccer-v3": (
        "push the ball into the goal",
        "kick the soccer ball into the net",
        "score a goal with the ball",
    ),
    "stick-push-v3": (
        "grab the stick and use it to push the bottle to the goal",
        "pick up the stick and push the thermos with it",
        "use the stick to push the bottle forward",
    ),
    "stick-pull-v3": (
        "grab the stick and use it to pull the bottle to the goal",
        "pick up the stick and pull the thermos with it",
        "use the stick to drag the bottle to the goal",
    ),
    "push-v3": (
        "push the puck to the goal",
        "slide the puck over to the goal",
        "move the puck to the goal without lifting it",
    ),
    "push-wall-v3": (
        "push the puck around the wall to the goal",
        "slide the puck past the wall to the goal",
        "get around the wall and push the puck to the goal",
    ),
    "push-back-v3": (
        "pull the puck back to the goal",
        "slide the puck back toward you to the goal",
        "drag the puck backwards to the goal",
    ),
    "reach-v3": (
        "reach the goal with the gripper",
        "move the gripper to the goal",
        "put the hand at the goal position",
    ),
    "reach-wall-v3": (
        "reach over the wall to the goal",
        "move the gripper past the wall to the goal",
        "get around the wall and put the hand at the goal",
    ),
    "shelf-place-v3": (
        "pick up the block and place it on the shelf",
        "put the block onto the shelf",
        "grab the block and set it down on the shelf",
    ),
    "sweep-into-v3": (
        "sweep the block into the hole",
        "push the block into the hole in the table",
        "slide the block into the hole",
    ),
    "sweep-v3": (
        "sweep the block off the edge of the table",
        "push the block off the table",
        "slide the block over the table edge",
    ),
    "window-open-v3": (
        "slide the window open",
        "push the window open",
        "open the window",
    ),
    "window-close-v3": (
        "slide the window closed",
        "push the window shut",
        "close the window",
    ),
}
