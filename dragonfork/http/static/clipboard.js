// Copy text to the clipboard and say so on the button that asked for it.
//
// navigator.clipboard needs a secure context (https or localhost); a server reached over plain http on a LAN
// address is not one, so fall back to a selected text area and execCommand, then to a prompt to copy by hand.

function copyWithSelection(text) {
  const area = document.createElement("textarea");
  area.value = text;
  area.setAttribute("readonly", "");
  area.style.position = "fixed";
  area.style.opacity = "0";
  document.body.append(area);
  area.select();
  try {
    return document.execCommand("copy");
  } catch {
    return false;
  } finally {
    area.remove();
  }
}

export async function copyText(text, button = null) {
  let copied = false;
  if (navigator.clipboard && window.isSecureContext) {
    try {
      await navigator.clipboard.writeText(text);
      copied = true;
    } catch {
      copied = false;
    }
  }
  if (!copied) copied = copyWithSelection(text);
  if (!copied) {
    window.prompt("Copy this:", text);
    return;
  }
  if (button) {
    const label = button.textContent;
    button.textContent = "Copied";
    button.disabled = true;
    setTimeout(() => {
      button.textContent = label;
      button.disabled = false;
    }, 1200);
  }
}
