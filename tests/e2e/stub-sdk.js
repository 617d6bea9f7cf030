// A stand-in for @avaturn-live/web-sdk with the same surface, for the states
// the real one cannot reach offline (live, speaking, transcripts, idle).
// Tests drive it through window.stubHeads.
export class AvaturnHead {
  constructor(element, options) {
    this.element = element;
    this.options = options;
    this.handlers = {};
    this.localAudio = Boolean(options.audioSource);
    this.toggles = [];
    this.disposed = false;
    (window.stubHeads ||= []).push(this);
  }
  on(name, callback) {
    (this.handlers[name] ||= []).push(callback);
  }
  off(name, callback) {
    this.handlers[name] = (this.handlers[name] || []).filter((cb) => cb !== callback);
  }
  emit(name, data) {
    for (const callback of this.handlers[name] || []) callback(data);
  }
  async init() {
    const video = document.createElement("div");
    video.className = "stub-video";
    this.element.append(video);
    this.emit("local_audio_change", this.localAudio);
  }
  // The real SDK's semantics: `v || !current`.
  toggleLocalAudio(value) {
    this.toggles.push(value);
    this.localAudio = value || !this.localAudio;
    this.emit("local_audio_change", this.localAudio);
  }
  async dispose() {
    this.disposed = true;
  }
}
