package main

// Copies of VMs, as a real vCenter makes them, and the faults deskpool's ownership rules are
// tested against.
//
// A real vCenter carries the source VM's advanced settings (extraConfig) into a clone; govmomi
// 0.24.2 only sets the CloneSpec's own. So an admin's copy of a desktop (or a backup product's
// restore) carries deskpool's markers under a new instance UUID: inheritExtraConfig gives every
// clone the source's settings, with the CloneSpec's own keys winning.
//
// Control API additions (registered by controlMux):
//
//	POST /vms/copy    {"vm": moref or name, "name": "...", "folder": name or moref (default: the
//	                  source's folder), "extra_config": {k: v} (optional, as in a CloneSpec)}
//	                  -> the copy as GET /vms lists it. A full clone with a fresh instance UUID,
//	                  made the way an admin's "Clone to Virtual Machine" is.
//	GET|POST /faults  {"clone_response_delay_ms": n, "destroy_fault": "" | "NoPermission",
//	                  "destroy_fault_vms": [moref...] (empty: every VM)} (any subset)
//	                  clone_response_delay_ms holds the CloneVM_Task answer back after the task
//	                  has started (a client killed meanwhile never learns the task);
//	                  destroy_fault makes Destroy_Task of those VMs fail with that fault.
//	/faults/clone     chosen CloneVM_Task faults by name glob or snapshot (clonefaults.go).

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/methods"
	"github.com/vmware/govmomi/vim25/types"
)

// simulatorOwnKeys are extraConfig keys the simulator gives every VM it creates: copying them
// would list them twice.
var simulatorOwnKeys = map[string]bool{"govcsim": true}

// safetyFaults is the state behind GET|POST /faults.
type safetyFaults struct {
	mu                  sync.Mutex
	cloneResponseDelay  time.Duration
	destroyFault        string
	destroyFaultVMs     map[string]bool
	destroyFaultsRaised int64
}

var faults = &safetyFaults{destroyFaultVMs: map[string]bool{}}

// inheritExtraConfig merges the source VM's extraConfig under the CloneSpec's own, as vCenter
// does. The spec's keys win; simulator-internal keys are not copied.
func inheritExtraConfig(source types.ManagedObjectReference, spec *types.VirtualMachineCloneSpec) {
	vm, ok := simulator.Map.Get(source).(*simulator.VirtualMachine)
	if !ok {
		return
	}
	var inherited []types.BaseOptionValue
	simulator.Map.WithLock(vm, func() {
		if vm.Config == nil {
			return
		}
		for _, o := range vm.Config.ExtraConfig {
			v := o.GetOptionValue()
			if simulatorOwnKeys[v.Key] || strings.HasPrefix(v.Key, "SET.") || strings.HasPrefix(v.Key, "RUN.") {
				continue
			}
			inherited = append(inherited, &types.OptionValue{Key: v.Key, Value: v.Value})
		}
	})
	if len(inherited) == 0 {
		return
	}
	// A copy of the config: the caller's request keeps its own.
	config := types.VirtualMachineConfigSpec{}
	if spec.Config != nil {
		config = *spec.Config
	}
	spec.Config = &config
	own := map[string]bool{}
	for _, o := range spec.Config.ExtraConfig {
		own[o.GetOptionValue().Key] = true
	}
	merged := make([]types.BaseOptionValue, 0, len(inherited)+len(spec.Config.ExtraConfig))
	for _, o := range inherited {
		if !own[o.GetOptionValue().Key] {
			merged = append(merged, o)
		}
	}
	spec.Config.ExtraConfig = append(merged, spec.Config.ExtraConfig...)
}

// holdCloneResponse waits, after a CloneVM_Task has started, for the configured delay.
func holdCloneResponse() {
	faults.mu.Lock()
	d := faults.cloneResponseDelay
	faults.mu.Unlock()
	if d > 0 {
		time.Sleep(d)
	}
}

// destroyFaultFor returns the fault a Destroy_Task of vm must fail with, if any.
func destroyFaultFor(vm types.ManagedObjectReference) types.BaseMethodFault {
	faults.mu.Lock()
	defer faults.mu.Unlock()
	if faults.destroyFault == "" || (len(faults.destroyFaultVMs) > 0 && !faults.destroyFaultVMs[vm.Value]) {
		return nil
	}
	faults.destroyFaultsRaised++
	switch faults.destroyFault {
	case "NoPermission":
		return &types.NoPermission{Object: vm, PrivilegeId: "VirtualMachine.Inventory.Delete"}
	default:
		return &types.SystemError{Reason: faults.destroyFault + " (injected by deskpool-vcsim)"}
	}
}

// startFailing creates a task on vm that fails with fault after the power delay.
func (h *harness) startFailing(vm types.ManagedObjectReference, id string, fault types.BaseMethodFault) *simulator.Task {
	h.mu.Lock()
	delay := h.cfg.powerDelay
	h.mu.Unlock()
	task := simulator.CreateTask(vm, id, func(*simulator.Task) (types.AnyType, types.BaseMethodFault) {
		time.Sleep(delay)
		return nil, fault
	})
	go task.Run()
	return task
}

func (h *harness) registerSafety(mux *http.ServeMux) {
	mux.HandleFunc("/vms/copy", h.only(http.MethodPost, h.handleCopyVM))
	mux.HandleFunc("/faults", h.handleFaults)
	h.registerCloneFaults(mux)
}

// findVM finds a VM by moref or by name.
func findVM(ref string) (*simulator.VirtualMachine, bool) {
	if vm, ok := simulator.Map.Get(types.ManagedObjectReference{Type: "VirtualMachine", Value: ref}).(*simulator.VirtualMachine); ok {
		return vm, true
	}
	for _, e := range simulator.Map.All("VirtualMachine") {
		vm, ok := e.(*simulator.VirtualMachine)
		if !ok {
			continue
		}
		var name string
		simulator.Map.WithLock(vm, func() { name = vm.Name })
		if name == ref {
			return vm, true
		}
	}
	return nil, false
}

func (h *harness) handleCopyVM(w http.ResponseWriter, r *http.Request) {
	var in struct {
		VM          string            `json:"vm"`
		Name        string            `json:"name"`
		Folder      string            `json:"folder"`
		ExtraConfig map[string]string `json:"extra_config"`
	}
	dec := json.NewDecoder(r.Body)
	dec.DisallowUnknownFields()
	if err := dec.Decode(&in); err != nil || in.VM == "" || in.Name == "" {
		writeErr(w, http.StatusBadRequest, fmt.Errorf(`body must be {"vm":"...","name":"...","folder":"...","extra_config":{...}}`))
		return
	}
	src, ok := findVM(in.VM)
	if !ok {
		writeErr(w, http.StatusNotFound, fmt.Errorf("no VM %q", in.VM))
		return
	}
	var folder types.ManagedObjectReference
	simulator.Map.WithLock(src, func() {
		if src.Parent != nil {
			folder = *src.Parent
		}
	})
	if in.Folder != "" {
		if ref, ok := h.childFolder(in.Folder); ok {
			folder = ref
		} else if f, ok := simulator.Map.Get(types.ManagedObjectReference{Type: "Folder", Value: in.Folder}).(*simulator.Folder); ok {
			folder = f.Self
		} else {
			writeErr(w, http.StatusNotFound, fmt.Errorf("no folder %q", in.Folder))
			return
		}
	}
	spec := types.VirtualMachineCloneSpec{Config: &types.VirtualMachineConfigSpec{}}
	for k, v := range in.ExtraConfig {
		spec.Config.ExtraConfig = append(spec.Config.ExtraConfig, &types.OptionValue{Key: k, Value: v})
	}
	inheritExtraConfig(src.Self, &spec)
	req := &types.CloneVM_Task{This: src.Self, Folder: folder, Name: in.Name, Spec: spec}
	ctx := context.Background()
	res, err := methods.CloneVM_Task(ctx, h.client, req)
	if err != nil {
		writeErr(w, http.StatusInternalServerError, err)
		return
	}
	out, f := innerTaskResult(res.Returnval)
	if f != nil {
		writeErr(w, http.StatusConflict, fmt.Errorf("CloneVM_Task: %T", f))
		return
	}
	ref := out.(types.ManagedObjectReference)
	vm, ok := simulator.Map.Get(ref).(*simulator.VirtualMachine)
	if !ok {
		writeErr(w, http.StatusInternalServerError, fmt.Errorf("copy %s vanished", ref.Value))
		return
	}
	info := vmInfo{Moref: ref.Value, ExtraConfig: map[string]string{}}
	simulator.Map.WithLock(vm, func() {
		info.Name = vm.Name
		info.PowerState = string(vm.Runtime.PowerState)
		if vm.Config != nil {
			info.InstanceUUID = vm.Config.InstanceUuid
			for _, o := range vm.Config.ExtraConfig {
				v := o.GetOptionValue()
				info.ExtraConfig[v.Key] = fmt.Sprint(v.Value)
			}
		}
	})
	info.FolderMoref = folder.Value
	info.Folder = entityName(folder)
	writeJSON(w, http.StatusOK, info)
}

func (h *harness) handleFaults(w http.ResponseWriter, r *http.Request) {
	if r.Method == http.MethodPost {
		var in struct {
			CloneResponseDelayMs *int64   `json:"clone_response_delay_ms"`
			DestroyFault         *string  `json:"destroy_fault"`
			DestroyFaultVMs      []string `json:"destroy_fault_vms"`
		}
		dec := json.NewDecoder(r.Body)
		dec.DisallowUnknownFields()
		if err := dec.Decode(&in); err != nil {
			writeErr(w, http.StatusBadRequest, err)
			return
		}
		faults.mu.Lock()
		if in.CloneResponseDelayMs != nil {
			faults.cloneResponseDelay = time.Duration(*in.CloneResponseDelayMs) * time.Millisecond
		}
		if in.DestroyFault != nil {
			faults.destroyFault = *in.DestroyFault
		}
		if in.DestroyFaultVMs != nil {
			faults.destroyFaultVMs = map[string]bool{}
			for _, v := range in.DestroyFaultVMs {
				faults.destroyFaultVMs[v] = true
			}
		}
		faults.mu.Unlock()
	} else if r.Method != http.MethodGet {
		writeJSON(w, http.StatusMethodNotAllowed, map[string]string{"error": "use GET or POST"})
		return
	}
	faults.mu.Lock()
	vms := []string{}
	for v := range faults.destroyFaultVMs {
		vms = append(vms, v)
	}
	out := map[string]interface{}{
		"clone_response_delay_ms": faults.cloneResponseDelay.Milliseconds(),
		"destroy_fault":           faults.destroyFault,
		"destroy_fault_vms":       vms,
		"destroy_faults_raised":   faults.destroyFaultsRaised,
	}
	faults.mu.Unlock()
	writeJSON(w, http.StatusOK, out)
}
