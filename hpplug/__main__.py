from hpplug.cli import main

main()
