// IASA Load Audio in ComfyUI's web page: an audio player and the upload button, as stock Load Audio has.
//
// The pinned frontend (comfyui_frontend_package 1.32.9) gives any node whose `audio` input says
// `audio_upload: true` an upload button whose widget looks for an `audioUI` player widget, but it adds
// that player only to its own list of nodes (LoadAudio, SaveAudio, PreviewAudio, ...). Without the player
// the node cannot be created: the page shows it as a missing node. Widgets are made in `input_order`,
// then in key order for the rest, so the player goes in before the upload button.
import { app } from "../../scripts/app.js";

const NODES = new Set(["IASALoadAudio"]);

app.registerExtension({
  name: "IASA.LoadAudioPlayer",
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (!NODES.has(nodeData?.name)) return;
    const required = nodeData.input?.required;
    if (!required || required.audioUI) return; // a frontend that adds the player itself
    const { upload, ...rest } = required;
    nodeData.input.required = { ...rest, audioUI: ["AUDIO_UI", {}], ...(upload ? { upload } : {}) };
  },
});
